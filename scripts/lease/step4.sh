# step 4: the last slice (the weights are whole), diffusers; score R1, sweep the shipped model; R2 starts in the background
set -e; . scripts/lease/env.sh
cp .carry/i4/part3 /tmp/inc/ && cat /tmp/inc/part0 /tmp/inc/part1 /tmp/inc/part2 /tmp/inc/part3 > $HOME_FID/pt_inception-2015-12-05-6726825d.pth
cp .carry/i4/*.sha256 $HOME_FID/ && (cd $HOME_FID && sha256sum -c *.sha256 2>/dev/null || { sha256sum *.pth; cat *.sha256; })
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/w4/*.whl
wait_for $R/r1.trained 400 || { echo "R1 did not finish"; tail -c 2000 $R/r1.log; exit 1; }
grep -h "steps/s" $R/r1.log
$Q --recipe fmnist-32-vflow-s --minutes 3 --out $R/r1 --schedules "$S_OURS" 2>&1 | grep -v Warning | tail -n 8
$Q --recipe shipped --minutes 0 --out parscale_ear/weights/fmnist-32-vflow-s --schedules "$S_SHIPPED" --table $R/shipped_sweep 2>&1 | grep "^|" 
# R2: the better of R1 (batch 1024) and the shipped recipe (batch 256) by FID-10k at 4+4, cfg 1.5 (s3c: 30.574), 8 minutes
B=$(python3 -c "import json; r=[x for x in json.load(open('$R/r1/quality.json'))['rows'] if x['steps']==[4,4] and x['cfg']==1.5][0]; print('1024 --lr 8e-4' if r['fid_train'] < 30.574 else '256 --lr 4e-4')")
echo "R2 batch: $B"
setsid nohup bash -c ". scripts/lease/env.sh; $Q --recipe fmnist-32-vflow-s --minutes 8 --batch-size $B --compile \
  --out $R/r2 --schedules '$S_OURS' --train-only && touch $R/r2.trained" > $R/r2.log 2>&1 < /dev/null &
pack s4
