# step 1: wheels (pytorch-fid, diffusers and its two missing needs) and the first slice of the FID weights (xz)
set -e; . scripts/lease/s9/env.sh
mkdir -p /tmp/site /tmp/data $FIDW /tmp/inc
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/w/*.whl
cp .carry/x1/* /tmp/inc/; ls -la /tmp/inc | tail -n +2
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.max.sm --format=csv,noheader; git log --oneline -1
