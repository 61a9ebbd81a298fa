#!/usr/bin/env bash
# Issue 8 screen on one GPU (session 5, 2026-12-02): one LiteVAE (README recipe), then the DiT-S/2 peer
# and energy-flow variants, MIN GPU-minutes each (default 3), FID-10k per schedule
# (RUNS/<part>/quality.{json,md}) and a sample grid each. One part per call, or several in order:
#   bash scripts/gpu_screen.sh RUNS PART [PART ...]     PART: vae d1 v1 v3 s1 s3 peer50k ours50k
# v1: fmnist-32-vflow (29.4M, P = 2). v3: v1 with the energy score's gradient kept out of the backbone
# (residual_grad 0). s1 / s3: the same two at 6.3M (a size that ships in the repository).
# peer50k / ours50k: FID-50k of d1 at 8 Euler + cfg 1.5, and of s1 or s3 (SHIP=s1|s3) at its two best schedules.
# Expects diffusers and pytorch-fid importable, Fashion-MNIST ($PARSCALE_EAR_DATA), FID weights ($TORCH_HOME).
set -euo pipefail
R=$1; shift
MIN=${MIN:-3}
mkdir -p "$R"
L=$(for i in $(seq 0 99); do echo $((i / 10)); done)
C=(--vae "$R/vae" --minutes "$MIN" --n 10000)
# temperature 0 is the stage's Euler flow path (the mean alone); > 0 adds the energy head's joint draw
S='1,1;1,1@2;2,2@2;2,2@2@0;4,4@2;4,4@2@0'
SMALL=(hybrid.coarse.width=128 hybrid.coarse.depth=3 hybrid.coarse.heads=2 hybrid.coarse.head_width=128
       hybrid.coarse.head_depth=2 hybrid.fine.width=192 hybrid.fine.depth=5 hybrid.fine.heads=3
       hybrid.fine.head_width=192 hybrid.fine.head_depth=2)
DETACH=(hybrid.coarse.residual_grad=0 hybrid.fine.residual_grad=0)
grid() { python -m parscale_ear sample --ckpt "$R/$1" --n 100 --labels $L --steps "$2" --cfg "$3" --out "$R/$1_samples.png"; }
ours() {  # NAME [KEY=VALUE ...]: fmnist-32-vflow with overrides
  local name=$1; shift
  python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-vflow --batch-size 256 --lr 4e-4 --out "$R/$name" --schedules "$S" \
      --set "$@"
  grid "$name" 2,2 2
}
for part in "$@"; do
  echo "== $part $(date -u +%T)"
  case "$part" in
    vae) python -m parscale_ear train-vae --preset fmnist-32 --data fashion-mnist --steps 3000 --batch-size 256 --lr 1e-3 \
             --out "$R/vae" --no-progress --sample-every 100000 ;;
    d1) python scripts/quality_run.py "${C[@]}" --recipe dit-s --batch-size 512 --lr 3e-4 --out "$R/d1" --schedules '1;2;4;8;8@1.5'
        grid d1 8 1.5 ;;
    v1) ours v1 ;;
    v3) ours v3 "${DETACH[@]}" ;;
    s1) ours s1 "${SMALL[@]}" ;;
    s3) ours s3 "${SMALL[@]}" "${DETACH[@]}" ;;
    peer50k) python scripts/quality_run.py "${C[@]}" --recipe dit-s --out "$R/d1" --schedules '8@1.5' --n 50000 --table fid50k ;;
    ours50k) python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-vflow --out "$R/${SHIP:-s1}" --schedules "${SHIP_SCHEDULES:-2,2@2;4,4@2}" \
                 --n 50000 --table fid50k ;;
    *) echo "gpu_screen.sh: PART must be vae, d1, v1, v3, s1, s3, peer50k or ours50k, got '$part'" >&2; exit 2 ;;
  esac
  touch "$R/$part.done"
done
