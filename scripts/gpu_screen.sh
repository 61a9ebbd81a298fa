#!/usr/bin/env bash
# Issue 8 screen for the next GPU session (prepared 2026-12-02, not yet run: this session had no
# device time): one LiteVAE (README recipe), then the v-mean energy-flow preset fmnist-32-vflow, its
# P = 1 version and the DiT-S/2 peer at two learning rates, 4 GPU-minutes each, FID-10k per schedule
# (RUNS/<name>/quality.{json,md}) and a sample grid each. One part per device call (each < 10 min):
#   bash scripts/gpu_screen.sh RUNS vae|v1|v2|d1|d2
# Expects diffusers and pytorch-fid importable, Fashion-MNIST ($PARSCALE_EAR_DATA), FID weights ($TORCH_HOME).
set -euo pipefail
R=$1 part=$2
mkdir -p "$R"
L=$(for i in $(seq 0 99); do echo $((i / 10)); done)
C=(--vae "$R/vae" --minutes 4 --n 10000)
# temperature 0 is the stage's Euler flow path (the mean alone); > 0 adds the energy head's joint draw
S='1,1@2;2,2@2;2,2@2@0;4,4@2;4,4@2@0;4,4@2@0.5;8,8@2@0.5'
grid() { python -m parscale_ear sample --ckpt "$R/$1" --n 100 --labels $L --steps "$2" --cfg "$3" --out "$R/$1_samples.png"; }
case "$part" in
  vae) bash scripts/gpu_quality.sh "$R" 4 10000 vae ;;
  v1) python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-vflow --batch-size 256 --lr 4e-4 --out "$R/v1" --schedules "$S"
      grid v1 4,4 2 ;;
  v2) python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-vflow --batch-size 256 --lr 4e-4 --out "$R/v2" --schedules "$S" \
          --set hybrid.coarse.streams=1 hybrid.fine.streams=1
      grid v2 4,4 2 ;;
  d1) python scripts/quality_run.py "${C[@]}" --recipe dit-s --batch-size 512 --lr 3e-4 --out "$R/d1" --schedules '2;4;8;8@1.5;16@1.5'
      grid d1 8 1.5 ;;
  d2) python scripts/quality_run.py "${C[@]}" --recipe dit-s --batch-size 256 --lr 5e-4 --out "$R/d2" --schedules '2;4;8;8@1.5;16@1.5'
      grid d2 8 1.5 ;;
  *) echo "gpu_screen.sh: PART must be vae, v1, v2, d1 or d2, got '$part'" >&2; exit 2 ;;
esac
