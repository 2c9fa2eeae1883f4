#!/usr/bin/env bash
# The goodput run's gate on the GPU in one device call or two (issue #21), from benchmarks/gpu after
# ../shared/gpu/install.sh and an lm-eval interpreter at /tmp/lm-eval-python:
#
#     bash gate_all.sh WORK WAIT_S CHECKPOINT_VARIANTS LM_EVAL_VARIANTS
#
# First call: starts, each in a session of its own so that it outlives the call, `goodput.py gate`
# (perplexity and golden answers of CHECKPOINT_VARIANTS against bf16 SmolLM2, at a 0.2 share of the
# GPU) and `gate_lm_eval.py` (lm-eval through the API for LM_EVAL_VARIANTS, all served at once):
# one engine start's time instead of several. Every call: waits up to WAIT_S seconds for both to
# finish, then copies WORK (reports and logs) to $OUT and says DONE or RUNNING.
set -uo pipefail
work=${1:?WORK}
wait_s=${2:?WAIT_S}
mkdir -p "$work"
if [[ ! -f $work/started ]]; then
  python3 -c 'import compare; compare.prepare_models()' > "$work/prepare.log" 2>&1 || { tail "$work/prepare.log"; exit 1; }
  setsid nohup python3 goodput.py gate --out "$work" --gate-variants "${3:?CHECKPOINT_VARIANTS}" \
    > "$work/evaluate.log" 2>&1 < /dev/null &
  setsid nohup python3 gate_lm_eval.py --out "$work/lm-eval" --lm-eval-python /tmp/lm-eval-python --timeout 420 \
    --variants "${4:?LM_EVAL_VARIANTS}" > "$work/lm-eval.log" 2>&1 < /dev/null &
  touch "$work/started"
fi
deadline=$((SECONDS + wait_s))
while ((SECONDS < deadline)) && pgrep -f "goodput.py gate|gate_lm_eval.py" > /dev/null; do sleep 5; done
cp -r "$work" "${OUT:?}/"
tail -n 4 "$work/evaluate.log" "$work/lm-eval.log"
if pgrep -f "goodput.py gate|gate_lm_eval.py" > /dev/null; then echo RUNNING; else echo DONE; fi
