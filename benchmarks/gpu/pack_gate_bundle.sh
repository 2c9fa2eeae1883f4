#!/usr/bin/env bash
# Packs, for a lent GPU machine, what the goodput gate needs beyond ../shared/gpu/prepare.sh's
# wheels: lm-eval's wheels (this checkout's .venv-eval, cp312 builds) and SmolLM2's pre-quantized
# checkpoints, made here (llm-compressor runs on this CPU, not there). One tarball, re-split at
# 44 MiB so that a chunk and the project's tree fit one device call (64 MiB).
#
#     bash benchmarks/gpu/pack_gate_bundle.sh NAME=CHECKPOINT_DIR ...
#     e.g. fp8-dynamic=/tmp/smollm2-fp8-dynamic w8a8=/tmp/smollm2-w8a8
#
# Writes .gpu/c0 ... .gpu/cN (git-ignored). On the machine: `bash .gpu/cK/receive.sh` for each K,
# then in the last call `source .gpu/cN/install.sh && bash .gpu/cN/extra.sh`, which installs the
# lm-eval wheels into /tmp/eval-site (run by /tmp/lm-eval-python) and unpacks each checkpoint into
# /tmp/mc/smollm2-135m-instruct-NAME, where goodput.py and gate_lm_eval.py look for them.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
(($# > 0)) || { echo "usage: $0 NAME=CHECKPOINT_DIR ..." >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash ../shared/gpu/prepare.sh > "$work/prepare.log" 2>&1 || { tail "$work/prepare.log" >&2; exit 1; }
mkdir -p "$work/stage/eval" "$work/ckpt"
# in part order: the folders' glob puts c10 before c2, the parts' names (part.00 ...) sort right
printf '%s\n' .gpu/c*/part.* | sort -t/ -k3 | xargs cat | tar xf - -C "$work/stage"
plat=()
for p in manylinux_2_35_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 any; do
  plat+=(--platform "$p")
done
.venv-eval/bin/python -m pip freeze --exclude-editable | grep -v '^#' > "$work/eval.txt"
while read -r req; do  # a binary wheel where there is one; a pure-Python sdist is built here
  PIP_CONSTRAINT= python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d "$work/stage/eval" "$req" 2> /dev/null \
    || python3 -m pip wheel -q --no-deps -w "$work/stage/eval" "$req"
done < "$work/eval.txt"
for pair in "$@"; do
  name=${pair%%=*}
  cp -r "${pair#*=}" "$work/ckpt/smollm2-135m-instruct-$name"
done
tar cf - -C "$work/ckpt" . | xz -T0 -6 > "$work/stage/checkpoints.tar.xz"
rm -rf .gpu && mkdir -p .gpu
tar cf - -C "$work/stage" . | split -b 44M -d -a 2 - .gpu/part.
i=0
for part in .gpu/part.*; do
  mkdir -p ".gpu/c$i" && mv "$part" ".gpu/c$i/" && cp ../shared/gpu/receive.sh ../shared/gpu/install.sh ".gpu/c$i/"
  i=$((i + 1))
done
last=".gpu/c$((i - 1))"
cat > "$last/extra.sh" << 'EXTRA'
#!/usr/bin/env bash
# After install.sh: lm-eval's wheels into /tmp/eval-site (/tmp/lm-eval-python runs python3 on
# them alone) and the pre-quantized SmolLM2 checkpoints into /tmp/mc.
set -euo pipefail
cd /root/gpu-parts/wheels
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/eval-site eval/*.whl
printf '#!/bin/sh\nPYTHONPATH=/tmp/eval-site exec python3 "$@"\n' > /tmp/lm-eval-python
chmod +x /tmp/lm-eval-python
mkdir -p /tmp/mc
python3 -c "import tarfile; tarfile.open('checkpoints.tar.xz').extractall('/tmp/mc')"
ls -d /tmp/mc/*
/tmp/lm-eval-python -c "import importlib.metadata as m, lm_eval; print('lm-eval', m.version('lm_eval'))"
EXTRA
echo "$i chunks under .gpu/ ($(du -sh .gpu | cut -f1)); the last, $last, holds extra.sh"
