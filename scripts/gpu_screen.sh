#!/usr/bin/env bash
# Issue 8 screening, prepared 2026-11-23 and not yet run (no GPU was lent after the first session's
# machine went back): one LiteVAE, then energy-flow variants and a tuned DiT-S/2 peer, 4 GPU-minutes
# each, FID-10k at few-step schedules (rows go to RUNS/<name>/quality.{json,md}).
#   bash scripts/gpu_screen.sh RUNS
# Expects diffusers and pytorch-fid importable, Fashion-MNIST ($PARSCALE_EAR_DATA), FID weights ($TORCH_HOME).
set -euo pipefail
R=$1
mkdir -p "$R"
[[ -f "$R/vae/checkpoint.pt" ]] || bash scripts/gpu_quality.sh "$R" 4 10000 vae > "$R/vae.log" 2>&1
C=(--vae "$R/vae" --minutes 4 --n 10000 --batch-size 256 --lr 4e-4)
S='1,1@2;2,2@2;4,4@2;4,4@2@0.7'
L=$(for i in $(seq 0 99); do echo $((i / 10)); done)
# b1: the noise only in the EAR head, a regression mean head, 4 energy-score draws per target
MEAN=(hybrid.coarse.backbone_noise=false hybrid.fine.backbone_noise=false hybrid.coarse.mean_weight=1.0
      hybrid.fine.mean_weight=1.0 hybrid.coarse.samples=4 hybrid.fine.samples=4)
# b3: b1 at ~6.7M parameters (13 MB in float16: a candidate for the embedded default)
SMALL=(hybrid.coarse.width=128 hybrid.coarse.heads=2 hybrid.coarse.depth=3 hybrid.coarse.head_width=128
       hybrid.fine.width=192 hybrid.fine.heads=3 hybrid.fine.head_width=192 hybrid.fine.head_depth=2)
python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-flow --out "$R/b1" --schedules "$S" --set "${MEAN[@]}" > "$R/b1.log" 2>&1
python -m parscale_ear sample --ckpt "$R/b1" --n 100 --labels $L --steps 4,4 --cfg 2 --out "$R/b1_samples.png" >> "$R/b1.log" 2>&1
# d1: the peer at batch 256, lr 5e-4 (the first run used the reference batch 512, lr 3e-4)
python scripts/quality_run.py --vae "$R/vae" --minutes 4 --n 10000 --recipe dit-s --batch-size 256 --lr 5e-4 --out "$R/d1" \
    --schedules '4;8;8@1.5;20' > "$R/d1.log" 2>&1
python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-flow --out "$R/b3" --schedules "$S" --set "${MEAN[@]}" "${SMALL[@]}" > "$R/b3.log" 2>&1
python -m parscale_ear sample --ckpt "$R/b3" --n 100 --labels $L --steps 4,4 --cfg 2 --out "$R/b3_samples.png" >> "$R/b3.log" 2>&1
python -m parscale_ear export --run "$R/b3" --out "$R/b3_release" --dtype float16 >> "$R/b3.log" 2>&1
# b2: b1 with P = 1 (what the streams buy at equal minutes)
python scripts/quality_run.py "${C[@]}" --recipe fmnist-32-flow --out "$R/b2" --schedules "$S" --set "${MEAN[@]}" \
    hybrid.coarse.streams=1 hybrid.fine.streams=1 > "$R/b2.log" 2>&1
echo ALL DONE
