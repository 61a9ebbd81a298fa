# Session 9 lease (2026-12-02): one end-to-end `bash ci/run.sh` (no arguments) on one H200. Device paths: /tmp.
export PYTHONPATH=/tmp/site:$PWD TORCH_HOME=/tmp/th PARSCALE_EAR_DATA=/tmp/data PYTHONUNBUFFERED=1
export FIDW=/tmp/th/hub/checkpoints CI_OUT=results/ci-cuda   # ci/run.sh's default output folder on a GPU
progress() { tail -n 4 /tmp/ci.log 2>/dev/null; ls $CI_OUT 2>/dev/null | tr '\n' ' '; echo; cat /tmp/ci.rc 2>/dev/null;
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; }
pack() { cp /tmp/ci.log $OUT/ 2>/dev/null; tar czf $OUT/ci.tgz --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npz' -C $CI_OUT . 2>/dev/null || true; }
