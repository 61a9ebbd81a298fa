# the rest of the lease, in the background: step_score.sh once R2 seed 1 is trained, then step_ci.sh once the ablation
# is done too (its timings need the GPU to itself); logs in RUNS/score.log and RUNS/ci.log, files packed by pack.sh
. scripts/lease/s8/env.sh
OUT=$R/out; mkdir -p $OUT
bash scripts/lease/s8/step_score.sh > $R/score.log 2>&1
wait_for $R/abl.done 900; bash scripts/lease/s8/step_ci.sh > $R/ci.log 2>&1; touch $R/chain.done
