# data, pytorch-fid, the first slice of the FID weights; the VAE run; R1 starts training in the background
set -e; . scripts/lease/env.sh
mkdir -p /tmp/site /tmp/data $HOME_FID /tmp/inc $R
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/w1/*.whl
cp .carry/d1/* /tmp/data/ && cp .carry/i1/part0 /tmp/inc/
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, pytorch_fid; print(torch.__version__, torch.cuda.get_device_name())"
python3 scripts/vae_run_from_release.py --out $R/vae --metrics results/2026-12-02-h200-compiled/vae_metrics.jsonl
# R1: the shipped recipe at batch 1024, lr 8e-4 (sqrt scaling of 256 / 4e-4), 3-minute budget, compiled
setsid nohup bash -c ". scripts/lease/env.sh; $Q --recipe fmnist-32-vflow-s --minutes 3 --batch-size 1024 --lr 8e-4 --compile \
  --out $R/r1 --schedules '$S_OURS' --train-only && touch $R/r1.trained" > $R/r1.log 2>&1 < /dev/null &
sleep 15; tail -c 600 $R/r1.log
