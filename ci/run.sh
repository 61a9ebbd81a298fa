#!/usr/bin/env bash
# Milestone validation: sanity, latency, fid_eval, the two peers, the ablation, then the gates.
#   bash ci/run.sh [--device cpu|cuda] [--quick] [--out DIR] [--ckpt RELEASE_OR_RUN] [--vae VAE_RUN]
# No --device: cuda where torch sees a CUDA device (the full validation), else the quick CPU run (--device cpu --quick).
# --device cpu --quick: the whole pipeline at tiny sizes, no gates on numbers (a plumbing check, minutes on a CPU).
# --device cuda: full sizes, each milestone gated on ci/gates.json; exits non-zero naming failed gates.
#   Without --ckpt it scores the shipped default model (parscale_ear/weights/fmnist-32-es); without --vae the
#   peer and the ablation train on that model's own LiteVAE latents (a run folder made from its weights, no VAE
#   training); each peer (the flow DiT, MeanFlow) trains for the default's 10.64 generator minutes; the ablation
#   trains 4 variants of the teacher's flow design (full, no coarse, no fine, P=1) x 2 seeds x 1000 steps, two runs
#   at a time on the one GPU. Each stage's seconds go to DIR/stage_seconds.json.
set -euo pipefail
cd "$(dirname "$0")/.."
device="" quick=0 out="" ckpt="" vae="" peer_minutes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --ckpt) ckpt=$2; shift 2 ;;
    --vae) vae=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "ci/run.sh: unknown argument $1 (see bash ci/run.sh --help)" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && py=.venv/bin/python
if [[ -z "$device" ]]; then  # no --device: the GPU when there is one, else the quick CPU run
  device=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null) \
    || { echo "ci/run.sh: $py cannot import torch (run: bash setup_env.sh)" >&2; exit 2; }
  [[ $device == cpu && $quick == 0 ]] && { echo "ci/run.sh: no CUDA device, so the quick CPU run (--device cpu for full sizes)"; quick=1; }
fi
[[ "$device" == cpu || "$device" == cuda ]] || { echo "ci/run.sh: --device must be cpu or cuda" >&2; exit 2; }
out=${out:-results/ci-$device}
q=(); [[ $quick == 1 ]] && q=(--quick)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
stage_seconds=()  # "name": seconds, written to $out/stage_seconds.json at the end
timed() { local name=$1 t0=$SECONDS; shift; "$@"; stage_seconds+=("\"$name\": $((SECONDS - t0))"); }

echo "== sanity"; timed sanity "$py" ci/sanity.py --device "$device" "${q[@]}" --out "$out"
echo "== latency"; timed latency "$py" ci/latency.py --device "$device" "${q[@]}" --out "$out" $([[ $device == cuda ]] && echo --bf16 --cuda-graphs --channels-last --compile)

if [[ -z "$ckpt" || -z "$vae" ]]; then  # no model given: the shipped one, or train one, so every milestone has one
  if [[ $quick == 1 ]]; then  # a tiny real training run on a slice of the data
    echo "== quick training run (tiny-32-flow, 400 images)"
    rm -rf "$out/runs"  # this script's own folder
    "$py" -m parscale_ear train-vae --preset tiny-32-flow --steps 3 --batch-size 16 --max-images 400 --out "$out/runs/vae" \
        --log-every 1 --sample-every 3 --ckpt-every 3 --warmup-steps 1 --no-progress
    "$py" -m parscale_ear train --vae "$out/runs/vae" --steps 3 --batch-size 16 --max-images 400 --out "$out/runs/gen" \
        --log-every 1 --sample-every 3 --ckpt-every 3 --warmup-steps 1 --no-progress
    ckpt=${ckpt:-$out/runs/gen}
  else  # full size: the shipped default model, and its LiteVAE for the models trained here
    # the peers get the shipped default's generator minutes: its teacher's 8.0, the teacher pairs and the student
    [[ -z "$ckpt" ]] && { ckpt=parscale_ear/weights/fmnist-32-es; peer_minutes=(--minutes 10.64); }
    if [[ -z "$vae" ]]; then  # the shipped model's LiteVAE: the peer and the ablation share the default's latents
      echo "== the shipped model's LiteVAE as the VAE run of the peer and the ablation"
      rm -rf "$out/runs/vae"  # this script's own folder
      "$py" experiments/vae_run_from_release.py --out "$out/runs/vae"
    fi
  fi
  vae=${vae:-$out/runs/vae}
fi
echo "== fid_eval"; timed fid_eval "$py" ci/fid_eval.py --device "$device" "${q[@]}" --out "$out" --ckpt "$ckpt"
for recipe in dit-s meanflow-s; do
  echo "== peer $recipe (same latents and minutes, reported, not gated)"
  timed "peer_$recipe" "$py" ci/peer.py --device "$device" "${q[@]}" --out "$out" --vae "$vae" --recipe "$recipe" \
      $([[ -f "$ckpt/metrics.jsonl" ]] && echo --gen-run "$ckpt") ${peer_minutes[@]+"${peer_minutes[@]}"}
done
seeds=(--seeds 0); [[ $quick == 0 ]] && seeds=(--seeds 0 1)
ablation=(--max-images 400)  # --quick: every variant, tiny
[[ $quick == 0 ]] && ablation=(--preset fmnist-32-vflow-s --variants full no_coarse no_fine P=1 --steps 1000)
[[ $quick == 0 && $device == cuda ]] && ablation+=(--jobs 2)
echo "== ablation"; timed ablation "$py" ci/ablation.py --device "$device" "${q[@]}" --out "$out" --vae "$vae" "${seeds[@]}" \
    "${ablation[@]}"
stage_seconds+=("\"total\": $SECONDS")  # the whole run, set-up steps included
(IFS=,; echo "{${stage_seconds[*]}}") > "$out/stage_seconds.json"
echo "== gates"
gates=(); [[ $quick == 0 && $device == cpu ]] && gates=(--no-gates)  # a quick run has no gates to check anyway
"$py" ci/validate_results.py "$out" "${gates[@]}"
