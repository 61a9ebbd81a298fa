# Session 8 lease (2026-12-02): shared settings of the steps below. Device paths live under /tmp (RUNS = /tmp/runs).
export R=/tmp/runs PYTHONPATH=/tmp/site:$PWD TORCH_HOME=/tmp/th PARSCALE_EAR_DATA=/tmp/data PYTHONUNBUFFERED=1
export HOME_FID=/tmp/th/hub/checkpoints
Q="python3 scripts/quality_run.py --vae $R/vae --n 10000"
S_OURS='2,2@1@0;4,4@1@0;4,4@1.5@0;8,8@1@0;4,4@1@1@fine.head_steps=1'
S_PEER='2;4;8;8@1.5'
wait_for() { local f=$1 limit=$2 t=0; while [ ! -e "$f" ] && [ $t -lt "$limit" ]; do sleep 5; t=$((t + 5)); done; [ -e "$f" ]; }
pack() { tar czf "$OUT/$1.tgz" -C $R --exclude='*.pt' --exclude='*.safetensors' . 2>/dev/null || true; }
bg() { local name=$1; shift; setsid nohup bash -c ". scripts/lease/s8/env.sh; $* && touch $R/$name.done" > $R/$name.log 2>&1 < /dev/null & }
progress() { for f in $R/*/metrics.jsonl $R/abl/ablation_runs/*/metrics.jsonl; do [ -e "$f" ] && echo "$f $(tail -n 1 $f | cut -c 1-160)"; done; ls $R/*.done 2>/dev/null; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; }
