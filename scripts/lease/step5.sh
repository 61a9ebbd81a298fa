# step 5: wait for R2 (its 8 minutes run in the background); step5b scores it
. scripts/lease/env.sh
wait_for $R/r2.trained 570 || { echo "R2 still training"; tail -n 1 $R/r2/metrics.jsonl; exit 3; }
grep -h "steps/s" $R/r2.log; tail -n 1 $R/r2/metrics.jsonl
