# CPU-scale design screen (issue 8), 2026-12-02: one LiteVAE (the README's CPU recipe), then the
# new v-mean + joint-residual energy-flow stages (coarse/fine), the DiT peer at equal parameters and
# the new stage as one flat stage at the DiT's depth, each 600 steps x 64 images on the same 10,000
# Fashion-MNIST images, then FID-2k per schedule against the shipped train statistics.
#   bash run.sh [WORK_DIR]   (P: the installed command, default .venv/bin/parscale-ear of the repo)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
W=${1:-runs/cpu-design}; mkdir -p "$W"
P=${P:-$repo/.venv/bin/parscale-ear}; PY=${PY:-$repo/.venv/bin/python}
T=(--steps 600 --batch-size 64 --max-images 10000 --no-progress --log-every 50 --no-samples --device cpu)
[[ -f "$W/vae/checkpoint.pt" ]] || $P train-vae --preset fmnist-32-cpu --data fashion-mnist --steps 300 --batch-size 64 --lr 2e-3 \
    --max-images 10000 --out "$W/vae" --no-progress --log-every 50
NEW=(); for s in coarse fine; do NEW+=(hybrid.$s.backbone_noise=false hybrid.$s.mean_weight=1.0 hybrid.$s.mean_param=v
    hybrid.$s.time_dist=logit_normal hybrid.$s.samples=4 hybrid.$s.residual_blocks=1); done
train() { local name=$1; shift; [[ -f "$W/$name/checkpoint.pt" ]] || $P train --vae "$W/vae" "${T[@]}" --out "$W/$name" "$@"; }
score() { local name=$1 sched=$2; [[ -f "$W/$name/quality.json" ]] || $PY "$repo/scripts/quality_run.py" --vae "$W/vae" --recipe "$name" --minutes 0 --out "$W/$name" \
    --schedules "$sched" --n 2000 --device cpu; }
train new --lr 1e-3 --set "${NEW[@]}"
score new '1,1;2,2;2,2@1@0;4,4@1@0;4,4@2@0.5'
train dit --lr 1e-3 --peer dit-s --set dit.num_layers=6 dit.heads=2
score dit '2;4;8;16'
# one stage (no coarse split) with the new stage at the DiT's depth: 5 blocks + 1 residual block, 2.05M
FLAT=(); for o in "${NEW[@]}"; do [[ $o == hybrid.fine.* ]] && FLAT+=("$o"); done
train flat --lr 1e-3 --mode no_coarse --set "${FLAT[@]}" hybrid.fine.depth=5 hybrid.fine.width=128 hybrid.fine.heads=2
score flat '2@1@0;2'
# session 5: the flat stage with the energy score's gradient kept out of the backbone (residual_grad 0)
train flat0 --lr 1e-3 --mode no_coarse --set "${FLAT[@]}" hybrid.fine.depth=5 hybrid.fine.width=128 hybrid.fine.heads=2 \
    hybrid.fine.residual_grad=0
score flat0 '2@1@0;2'
