# step 5b: score R2, export it (float16)
. scripts/lease/env.sh
$Q --recipe fmnist-32-vflow-s --minutes 8 --out $R/r2 --schedules "$S_OURS" 2>&1 | grep "^|"
python3 -m parscale_ear export --run $R/r2 --out $OUT/r2 --dtype float16 && touch $R/r2.exported
pack s5
