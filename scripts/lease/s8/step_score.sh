# scoring: R2 seed 1 at R2's schedules (FID-10k) and at the two headline schedules (FID-50k); the ablation's table
. scripts/lease/s8/env.sh
wait_for $R/r2s1.done 900 || { echo "R2 seed 1 still training"; progress; exit 3; }
grep -h "steps/s" $R/r2s1.log; tail -n 1 $R/r2s1/metrics.jsonl
$Q --recipe fmnist-32-vflow-s --minutes 8 --out $R/r2s1 --schedules "$S_OURS" 2>&1 | grep "^|"
$Q --recipe fmnist-32-vflow-s --minutes 8 --out $R/r2s1 --schedules '8,8@1@0;4,4@1@0' --n 50000 --table fid50k 2>&1 | grep "^|"
python3 -m parscale_ear sample --ckpt $R/r2s1 --n 100 --labels $(for i in $(seq 0 99); do echo $((i / 10)); done) --steps 4,4 \
  --cfg 1 --temperature 0 --out $OUT/r2s1_samples.png
tail -n 14 $R/abl.log; ls $R/abl.done
pack score
