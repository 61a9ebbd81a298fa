# step 6: FID-50k of R2 at its best schedules; the peer at batch 1024; the 256x256 latency at cfg 1
. scripts/lease/env.sh
SEL=$(python3 -c "
import json; rows=json.load(open('$R/r2/quality.json'))['rows']
best=min(rows, key=lambda r: r['fid_train']); d=[r for r in rows if r['steps']==[4,4] and r['cfg']==1 and r['temperature']==0][0]
spec=lambda r: ','.join(map(str,r['steps']))+'@%g@%g'%(r['cfg'],r['temperature'])+('@'+','.join('%s=%s'%kv for kv in r['settings'].items()) if r.get('settings') else '')
print(';'.join(dict.fromkeys([spec(best), spec(d)])))")
echo "FID-50k at $SEL"
$Q --recipe fmnist-32-vflow-s --minutes 8 --out $R/r2 --schedules "$SEL" --n 50000 --table fid50k 2>&1 | grep "^|"
python3 -m parscale_ear sample --ckpt $R/r2 --n 100 --labels $(for i in $(seq 0 99); do echo $((i / 10)); done) --steps 4,4 --cfg 1 --temperature 0 --out $OUT/r2_samples.png
pack s6a
$Q --recipe dit-s --minutes 3 --batch-size 1024 --lr 4.2e-4 --compile --out $R/p1 --schedules "$S_PEER" 2>&1 | grep -E "steps/s|^\|"
pack s6b
python3 ci/latency.py --device cuda --preset lite-256-vflow --bf16 --cuda-graphs --channels-last --compile --batch-sizes 16 64 \
  --steps 4,4 --cfg 1 --temperature 0 --out $R/lat256 2>&1 | grep -E "end_to_end|^\| end"
pack s6
