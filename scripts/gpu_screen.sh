#!/usr/bin/env bash
# Issue 8 screen on one GPU (session 5, 2026-12-02): one LiteVAE (README recipe), then the DiT-S/2 peer
# and energy-flow variants, MIN GPU-minutes each (default 3), FID-10k per schedule
# (RUNS/<part>/quality.{json,md}) and a sample grid each. One part per call, or several in order:
#   bash scripts/gpu_screen.sh RUNS PART [PART ...]     PART: vae d1 v1 v3 s1 s3 peer50k ours50k
# v1: fmnist-32-vflow (29.4M, P = 2). v3: v1 with the energy score's gradient kept out of the backbone
# (residual_grad 0). s1 / s3: the same two at 6.3M, the shipped preset fmnist-32-vflow-s (s3 is it).
# (At commit 3d89936, where rows 21-36 of docs/QUALITY.md ran, s1/s3 spelled that size as --set overrides
# on fmnist-32-vflow; the preset is the same model, tested in tests/test_default_model.py.)
# peer50k / ours50k: FID-50k of d1 at 8 Euler + cfg 1.5, and of SHIP (default s3) at SHIP_SCHEDULES (default its two best).
# Session 6 parts, training step compiled (quality_run --compile; the compile counts in MIN):
# s3c / s3c1 (seed 1) / v3c / d1c: s3, s3 again, v3, d1; c50k: FID-50k of C50K (default s3c) at C50K_SCHEDULES;
# lat256: ci/latency.py on lite-256-vflow at the shipped schedule and the DiT-XL/2 reference (scripts/dit_xl_latency.py).
# Expects diffusers and pytorch-fid importable, Fashion-MNIST ($PARSCALE_EAR_DATA), FID weights ($TORCH_HOME).
set -euo pipefail
R=$1; shift
MIN=${MIN:-3}
mkdir -p "$R"
L=$(for i in $(seq 0 99); do echo $((i / 10)); done)
C=(--vae "$R/vae" --minutes "$MIN" --n 10000)
# temperature 0 is the stage's Euler flow path (the mean alone); > 0 adds the energy head's joint draw
S='1,1;1,1@2;2,2@2;2,2@2@0;4,4@2;4,4@2@0'
grid() { python -m parscale_ear sample --ckpt "$R/$1" --n 100 --labels $L --steps "$2" --cfg "$3" ${4:+--temperature "$4"} \
             --out "$R/$1_samples.png"; }
ours() {  # NAME PRESET [KEY=VALUE ...]: one of our presets with overrides ($OURS_ARGS: more quality_run options)
  local name=$1 preset=$2; shift 2
  python scripts/quality_run.py "${C[@]}" --recipe "$preset" --batch-size 256 --lr 4e-4 --out "$R/$name" --schedules "${SCHED:-$S}" \
      ${OURS_ARGS:-} --set "$@"
  grid "$name" 4,4 2 0
}
SC='1,1@2@0;2,2@2@0;4,4@2@0;4,4@1.5@0'  # the compiled runs' schedules: the Euler path (temperature 0) only
for part in "$@"; do
  echo "== $part $(date -u +%T)"
  case "$part" in
    vae) python -m parscale_ear train-vae --preset fmnist-32 --data fashion-mnist --steps 3000 --batch-size 256 --lr 1e-3 \
             --out "$R/vae" --no-progress --sample-every 100000 ;;
    d1) python scripts/quality_run.py "${C[@]}" --recipe dit-s --batch-size 512 --lr 3e-4 --out "$R/d1" --schedules '1;2;4;8;8@1.5'
        grid d1 8 1.5 ;;
    v1) ours v1 fmnist-32-vflow ;;
    v3) ours v3 fmnist-32-vflow hybrid.coarse.residual_grad=0 hybrid.fine.residual_grad=0 ;;
    s1) ours s1 fmnist-32-vflow-s hybrid.coarse.residual_grad=1 hybrid.fine.residual_grad=1 ;;
    s3) ours s3 fmnist-32-vflow-s ;;
    peer50k) python scripts/quality_run.py "${C[@]}" --recipe dit-s --out "$R/d1" --schedules '8@1.5' --n 50000 --table fid50k ;;
    ours50k) python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-vflow-s --out "$R/${SHIP:-s3}" --schedules "${SHIP_SCHEDULES:-4,4@2@0;2,2@2@0}" \
                 --n 50000 --table fid50k ;;
    # session 6: the same recipes with the training step compiled (torch.compile; its compile time counts in MIN)
    s3c) SCHED=$SC OURS_ARGS=--compile ours s3c fmnist-32-vflow-s ;;
    s3c1) SCHED='2,2@2@0;4,4@2@0;4,4@1.5@0' OURS_ARGS="--compile --seed 1" ours s3c1 fmnist-32-vflow-s ;;
    v3c) SCHED=$SC OURS_ARGS=--compile ours v3c fmnist-32-vflow hybrid.coarse.residual_grad=0 hybrid.fine.residual_grad=0 ;;
    d1c) python scripts/quality_run.py "${C[@]}" --recipe dit-s --batch-size 512 --lr 3e-4 --compile --out "$R/d1c" \
             --schedules '1;2;4;8;8@1.5'
         grid d1c 8 1.5 ;;
    c50k) python scripts/quality_run.py "${C[@]}" --recipe "${C50K_RECIPE:-fmnist-32-vflow-s}" --out "$R/${C50K:-s3c}" \
              --schedules "${C50K_SCHEDULES:-4,4@2@0;4,4@1.5@0}" --n 50000 --table fid50k ;;
    lat256) python ci/latency.py --device cuda --preset lite-256-vflow --bf16 --cuda-graphs --channels-last --compile \
                --batch-sizes 16 64 --out "$R/lat256"
            python scripts/dit_xl_latency.py --batch 16 --steps 250 --runs 5 --out "$R/lat256/dit_xl.json" ;;
    *) echo "gpu_screen.sh: PART must be vae, d1, v1, v3, s1, s3, peer50k, ours50k, s3c, s3c1, v3c, d1c, c50k or lat256, got '$part'" >&2
       exit 2 ;;
  esac
  touch "$R/$part.done"
done
