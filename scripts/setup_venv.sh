#!/usr/bin/env bash
# scripts/setup_venv.sh VENV EXTRAS: install lesionseg (editable, with EXTRAS) into the virtual environment VENV
# with the torch build for this machine. uv's --torch-backend=auto reads the NVIDIA driver and takes torch from
# PyTorch's own index: the CUDA build that suits the driver, or the CPU build where there is no NVIDIA GPU (PyPI's
# torch for Linux brings the CUDA libraries, about 3 GB). Where that index cannot be reached (a machine that reaches
# PyPI or a mirror only), pip installs what the configured index offers (pip.conf, PIP_INDEX_URL), and says so.
# LESIONSEG_TORCH_BACKEND: auto (default), or a uv backend (cpu, cu126, ...), or `index` for pip straight away.
set -euo pipefail
venv=$1 extras=$2
python="$venv/bin/python"
backend=${LESIONSEG_TORCH_BACKEND:-auto}

"$python" -m pip install --quiet --upgrade pip
if [ "$backend" != index ]; then
  if "$python" -m pip install --quiet uv \
    && "$venv/bin/uv" pip install --quiet --python "$python" --torch-backend="$backend" -e ".[$extras]"; then
    echo "setup: torch from PyTorch's wheel index (uv --torch-backend=$backend): $("$python" -c 'import torch; print(torch.__version__)')"
    exit 0
  fi
  echo "setup: PyTorch's wheel index cannot be reached (uv --torch-backend=$backend failed above):" \
    "installing torch from the configured package index with pip instead" >&2
fi
"$python" -m pip install --quiet -e ".[$extras]"
echo "setup: torch from the configured package index (pip): $("$python" -c 'import torch; print(torch.__version__)')"
