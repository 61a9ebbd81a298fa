#!/usr/bin/env bash
# Evaluation reported in CHANGELOG.md: reference statistics, FID-50k of a trained release with and
# without CFG (+ a 10k temperature/cfg sweep), VAE rFID/PSNR/SSIM, sanity and latency milestones.
# Usage: bash scripts/fmnist_eval_gpu.sh RUN_DIR OUT_DIR   (RUN_DIR from fmnist_train_gpu.sh)
set -euo pipefail
run=${1:?usage: fmnist_eval_gpu.sh RUN_DIR OUT_DIR}
out=${2:?usage: fmnist_eval_gpu.sh RUN_DIR OUT_DIR}
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$run/stats"
[[ -f "$run/stats/fashion-mnist-test.npz" ]] || python3 scripts/make_reference_stats.py --device cuda --out "$run/stats"
python3 ci/sanity.py --device cuda --out "$out"
python3 ci/latency.py --device cuda --bf16 --cuda-graphs --channels-last --compile --out "$out"
python3 ci/fid_eval.py --device cuda --ckpt "$run/release" --ref "$run/stats/fashion-mnist-train.npz" --n 50000 --cfg 1.0 2.0 --out "$out"
python3 ci/fid_eval.py --device cuda --ckpt "$run/release" --ref "$run/stats/fashion-mnist-train.npz" --n 10000 \
    --cfg 1 1.5 2 3 --temperature 1 0.85 0.7 --out "$out/sweep"
