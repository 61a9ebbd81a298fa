# ci/run.sh's GPU stages that need no training (sanity, latency, fid_eval on the shipped default), each timed
. scripts/lease/s8/env.sh; C=$R/ci; mkdir -p $C; cp .carry/d2/* /tmp/data/
t0=$(date +%s); python3 ci/sanity.py --device cuda --out $C 2>&1 | tail -n 3; t1=$(date +%s)
python3 ci/latency.py --device cuda --out $C --bf16 --cuda-graphs --channels-last --compile 2>&1 | grep -E "^\| end|P99|gate" | head; t2=$(date +%s)
python3 ci/fid_eval.py --device cuda --out $C --ckpt parscale_ear/weights/fmnist-32-vflow-s 2>&1 | tail -n 4; t3=$(date +%s)
python3 ci/validate_results.py $C 2>&1 | tail -n 8
echo "{\"sanity_s\": $((t1 - t0)), \"latency_s\": $((t2 - t1)), \"fid_eval_s\": $((t3 - t2))}" | tee $C/stage_seconds.json
pack ci
