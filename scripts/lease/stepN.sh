# steps 2-3: one more slice of the FID weights; R1's progress
. scripts/lease/env.sh
cp .carry/i$1/part* /tmp/inc/ && ls -la /tmp/inc | tail -n +2
tail -n 2 $R/r1/metrics.jsonl 2>/dev/null; grep -h "steps/s" $R/r1.log || true
