# step 1: data, pytorch-fid, diffusers, the shipped model's VAE run; three fixed-step
# trainings start at once in the background (fixed steps: sharing the GPU changes their wall time, not their recipe)
set -e; . scripts/lease/s8/env.sh
mkdir -p /tmp/site /tmp/data $HOME_FID /tmp/inc $R
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/w1/*.whl .carry/w4/*.whl
cp .carry/d1/* /tmp/data/
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.max.sm --format=csv,noheader
python3 scripts/vae_run_from_release.py --out $R/vae --metrics results/2026-12-02-h200-compiled/vae_metrics.jsonl
T="python3 -m parscale_ear train --vae $R/vae --compile --no-progress --no-samples --log-every 20 --ckpt-every 100000"
# R2 seed 1: the README's generator command (the shipped R2's 12,183 steps) with --seed 1
bg r2s1 "$T --preset fmnist-32-vflow-s --steps 12183 --batch-size 1024 --lr 8e-4 --seed 1 --out $R/r2s1"
# P8: the DiT-S/2 peer for 8 minutes' worth of steps at P1's solo rate (18.106 steps/s after 54.6 s of start-up and
# compile in P1's 3 minutes): 18.106 x (480 - 54.6) = 7,702 steps, P1's batch 1024 and lr 4.2e-4
bg p8 "$T --peer dit-s --steps 7702 --batch-size 1024 --lr 4.2e-4 --out $R/p8"
# the ablation on the shipped design: 4 variants x 2 seeds x 1000 steps, two runs at a time
bg abl "python3 ci/ablation.py --device cuda --out $R/abl --vae $R/vae --preset fmnist-32-vflow-s --seeds 0 1 \
  --variants full no_coarse no_fine P=1 --steps 1000 --jobs 2 --ref parscale_ear/stats/fashion-mnist-train.npz"
sleep 45; tail -n 3 $R/*.log; progress
