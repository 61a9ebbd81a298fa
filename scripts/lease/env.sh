# Session 7 lease (2026-12-02): shared settings of the steps below. Device paths live under /tmp (RUNS = /tmp/runs).
export R=/tmp/runs PYTHONPATH=/tmp/site:$PWD TORCH_HOME=/tmp/th PARSCALE_EAR_DATA=/tmp/data PYTHONUNBUFFERED=1
export HOME_FID=/tmp/th/hub/checkpoints
# the shipped model's LiteVAE (session 6's, 1.10 min) as the VAE run of every generator here
Q="python3 scripts/quality_run.py --vae $R/vae --n 10000"
S_OURS='2,2@1@0;4,4@1@0;4,4@1.5@0;8,8@1@0;4,4@1@1@fine.head_steps=1'
S_SHIPPED='4,4@1@0;3,3@1@0;8,8@1@0;4,4@1@0.5@fine.head_steps=1;4,4@1@1@fine.head_steps=1;4,4@1@0@time_shift=0.5;4,4@1@0@time_shift=2'
S_PEER='2;4;8;8@1.5'
wait_for() { local f=$1 limit=$2 t=0; while [ ! -e "$f" ] && [ $t -lt "$limit" ]; do sleep 5; t=$((t + 5)); done; [ -e "$f" ]; }
pack() { tar czf "$OUT/$1.tgz" -C $R --exclude='*.pt' --exclude='*.safetensors' . 2>/dev/null || true; }
