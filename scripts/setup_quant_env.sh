#!/usr/bin/env bash
# Create the quantization venv (default .venv-quant at the repo root) with llm-compressor and this
# package installed without dependencies, so that `serve-app quantize` can re-execute the pipeline
# in it. Idempotent: a stamp file records the requirements it was built from.
#
#   scripts/setup_quant_env.sh [VENV_DIR]          (or: make quant-env)
#
# TORCH_INDEX (optional): PyTorch's CPU wheel index, where pip has no other source for the pinned
# torch==2.13.0+cpu (it is not on PyPI), e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv-quant}"
python="${PYTHON:-python3}"
reqs="$repo/requirements/quantize.txt"
stamp="$venv/.installed-quant"

if [[ -f "$stamp" ]] && cmp -s "$stamp" "$reqs"; then
    echo "quantization env is up to date: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r "$reqs"
"$venv/bin/python" -m pip install -q --no-deps -e "$repo"
"$venv/bin/python" -c "import llmcompressor, compressed_tensors; print('llmcompressor', llmcompressor.__version__)"
cp "$reqs" "$stamp"
echo "quantization env ready: $venv"
