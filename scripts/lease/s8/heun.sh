# a second, short lease (2026-12-02): the FID weights in three slices (.carry/h1-h3, the last with pytorch-fid);
# `bash scripts/lease/s8/heun.sh N` copies slice N, and with N = 3 scores the shipped model with the Heun solver
set -e; . scripts/lease/s8/env.sh; mkdir -p /tmp/site $HOME_FID /tmp/inc $R
cp .carry/h$1/part* /tmp/inc/; ls /tmp/inc
[ "$1" = 3 ] || exit 0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/h3/*.whl
cat /tmp/inc/part0 /tmp/inc/part1 /tmp/inc/part2 > $HOME_FID/pt_inception-2015-12-05-6726825d.pth
cp .carry/h3/*.sha256 $HOME_FID/ && (cd $HOME_FID && sha256sum -c *.sha256)
python3 scripts/vae_run_from_release.py --out $R/vae --metrics results/2026-12-02-h200-compiled/vae_metrics.jsonl
$Q --recipe shipped --minutes 0 --out parscale_ear/weights/fmnist-32-vflow-s --table $OUT/heun \
  --schedules '2,2@1@0@solver=heun;3,3@1@0@solver=heun;4,4@1@0@solver=heun;4,4@1@0@fine.solver=heun;8,8@1@0@solver=heun' \
  2>&1 | grep -E "^\{|^\|"
