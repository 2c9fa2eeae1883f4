#!/usr/bin/env bash
# Create lm-eval's venv (default .venv-eval at the repo root). lm-eval only sends HTTP requests to a
# server (plain vLLM or this stack), so neither vLLM nor torch is installed. Idempotent: a stamp file
# records the requirements it was built from.
#
#   scripts/setup_eval_env.sh [VENV_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv-eval}"
python="${PYTHON:-python3}"
reqs="$repo/requirements/eval.txt"
stamp="$venv/.installed-eval"

if [[ -f "$stamp" ]] && cmp -s "$stamp" "$reqs"; then
    echo "lm-eval env is up to date: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -r "$reqs"
"$venv/bin/python" -c "import importlib.metadata as m; print('lm-eval', m.version('lm-eval'))"
cp "$reqs" "$stamp"
echo "lm-eval env ready: $venv"
