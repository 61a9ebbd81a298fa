#!/usr/bin/env bash
# The Fashion-MNIST training run reported in CHANGELOG.md: both stages on one GPU, then samples.
# Usage: bash scripts/fmnist_train_gpu.sh OUT_DIR [VAE_STEPS] [GEN_STEPS] [GEN_MAX_MINUTES]
set -euo pipefail
out=${1:?usage: fmnist_train_gpu.sh OUT_DIR [VAE_STEPS] [GEN_STEPS] [GEN_MAX_MINUTES]}
vae_steps=${2:-3000}
gen_steps=${3:-2600}
gen_minutes=${4:-0}  # safety stop (0 = none); the cosine schedule is sized by GEN_STEPS
export PYTHONUNBUFFERED=1
pe() { python3 -m parscale_ear "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
pe train-vae --preset fmnist-32 --data fashion-mnist --steps "$vae_steps" --batch-size 256 --lr 1e-3 \
   --out "$out/vae" --log-every 100 --sample-every 1000 --ckpt-every 1000 --no-progress
pe train --vae "$out/vae" --steps "$gen_steps" --max-minutes "$gen_minutes" --batch-size 512 --lr 5e-4 \
   --out "$out/gen" --log-every 100 --sample-every 2000 --ckpt-every 2000 --no-progress
pe export --run "$out/gen" --out "$out/release"
labels=$(python3 -c "print(' '.join(str(i // 10) for i in range(100)))")  # one row per class
pe sample --ckpt "$out/release" --n 100 --labels $labels --seed 0 --out "$out/samples_cfg1.png"
pe sample --ckpt "$out/release" --n 100 --labels $labels --cfg 2.0 --seed 0 --out "$out/samples_cfg2.png"
