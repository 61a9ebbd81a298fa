#!/usr/bin/env bash
# The 2026-11-23 equal-budget comparison on one GPU: one LiteVAE (README recipe), then the DiT-S/2
# peer and the ParScale-EAR energy-flow preset, each trained for MINUTES GPU-minutes on its latents
# and scored at several schedules (FID-N against the train and test statistics, ms/image).
#   bash scripts/gpu_quality.sh RUNS MINUTES N [vae]
# With 'vae' it trains only the LiteVAE. Expects diffusers and pytorch-fid importable, Fashion-MNIST
# ($PARSCALE_EAR_DATA) and the FID weights ($TORCH_HOME).
set -euo pipefail
R=$1 M=$2 N=$3
if [[ "${4:-}" == vae ]]; then
    python -m parscale_ear train-vae --preset fmnist-32 --data fashion-mnist --steps 3000 --batch-size 256 --lr 1e-3 \
        --out "$R/vae" --no-progress --sample-every 100000
    exit 0
fi
python scripts/quality_run.py --vae "$R/vae" --recipe dit-s --minutes "$M" --out "$R/dit" --n "$N" \
    --batch-size 512 --lr 3e-4 --schedules '4;8;20;8@1.5'
python -m parscale_ear sample --ckpt "$R/dit" --n 100 --labels $(for i in $(seq 0 99); do echo $((i / 10)); done) \
    --steps 20 --cfg 1.5 --out "$R/dit_samples.png"
python scripts/quality_run.py --vae "$R/vae" --recipe fmnist-32-flow --minutes "$M" --out "$R/ef" --n "$N" \
    --batch-size 256 --lr 4e-4 --schedules '1,1;2,2;2,2@2;4,4@2'
python -m parscale_ear sample --ckpt "$R/ef" --n 100 --labels $(for i in $(seq 0 99); do echo $((i / 10)); done) \
    --steps 2,2 --cfg 2 --out "$R/ef_samples.png"
echo ALL DONE
