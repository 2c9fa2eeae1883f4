"""Where FP8 costs SmolLM2 its lm-eval scores, on a CPU: the project's two lm-eval tasks on the real
SmolLM2-135M in bf16 and with FP8 fake-quantized the two ways the goodput gate weighs (issue #21).

* ``fp8-tensor``: vLLM's online ``--quantization fp8`` as its kernels compute it, emulated: one
  scale per weight tensor and one per activation tensor, computed at run time (llm-compressor's
  QuantizationModifier with that scheme; vLLM fuses q/k/v and gate/up and scales each fused
  weight once, here each projection has its own scale: slightly kinder than vLLM);
* ``fp8-dynamic``: the FP8_DYNAMIC checkpoint ``serve-app quantize --method fp8-dynamic`` writes
  (one scale per output channel, activations scaled per token at run time), loaded through
  compressed-tensors, which decompresses the weights and quantizes each Linear's input on the fly;
* ``w8a8`` (with ``--w8a8``): the W8A8 int8 checkpoint of ``--method w8a8-int8``, loaded the same
  way: a check of this emulation against vLLM's real int8 kernels, which run on a CPU
  (``serve-app evaluate --lm-eval`` on that checkpoint).

No FP8 kernel runs: weights and activations are rounded to FP8 (e4m3) values and multiplied in bf16
on the CPU, so the scores show the rounding's effect, not a GPU's. lm-eval's ``hf`` model runs in
this process, one request at a time, greedy; the QA task with the chat template, as the API gate
sends it. Evidence for where to spend GPU time, not a gate verdict: the gate runs on the GPU.

Run in the quantization venv with lm-eval's site-packages after its own (both are this checkout's):

    .venv-quant/bin/python benchmarks/quantization/fp8_fake_quant_lm_eval.py \\
        --eval-site .venv-eval/lib/python3.11/site-packages --bf16 ~/.cache/serve-app/models/smollm2-135m-instruct \\
        --fp8-dynamic /tmp/smollm2-fp8-dynamic --w8a8 /tmp/smollm2-w8a8 --variants bf16,fp8-tensor,fp8-dynamic,w8a8 \\
        --out benchmarks/results/goodput-gate-cpu/fake-quant-lm-eval.json

The report judges each variant against bf16 as the gate does (``serve_app.quantize.lm_eval_verdict``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from serve_app.quantize.lm_eval_task import MC_TASK, OFFLINE_ENV, QA_TASK, TASK_DIR, task_scores
from serve_app.quantize.lm_eval_verdict import MAX_SCORE_DROP, judge


def _fp8(strategy: str, dynamic: bool) -> dict:
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy, "dynamic": dynamic}


def load(variant: str, args: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = {"fp8-dynamic": args.fp8_dynamic, "w8a8": args.w8a8}.get(variant) or args.bf16
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16)
    if variant == "fp8-tensor":
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        scheme = {"targets": ["Linear"], "weights": _fp8("tensor", False), "input_activations": _fp8("tensor", True)}
        recipe = QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
        oneshot(model=model, recipe=recipe)  # weight scales only: dynamic activations need no data
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def score(model, tokenizer, limit: int | None) -> dict[str, dict[str, float]]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    tasks = TaskManager(include_path=str(TASK_DIR))
    scores = {}
    for task in (MC_TASK, QA_TASK):
        result = simple_evaluate(
            model=lm, tasks=[task], task_manager=tasks, apply_chat_template=task == QA_TASK, limit=limit
        )
        scores[task] = task_scores(result["results"][task])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-site", type=Path, required=True, help="lm-eval's site-packages (.venv-eval's)")
    parser.add_argument("--bf16", type=Path, required=True, help="SmolLM2's safetensors folder")
    parser.add_argument("--fp8-dynamic", type=Path, required=True, help="serve-app quantize --method fp8-dynamic's")
    parser.add_argument("--w8a8", type=Path, help="serve-app quantize --method w8a8-int8's (variant w8a8)")
    parser.add_argument("--variants", default="bf16,fp8-tensor,fp8-dynamic")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.path.append(str(args.eval_site.resolve()))  # after this venv's torch, transformers, datasets
    os.environ.update(OFFLINE_ENV)
    args.out = args.out.resolve()
    os.chdir(TASK_DIR)  # the tasks' data_files are relative to it
    report = {"variants": {}, "command": sys.argv}
    for variant in args.variants.split(","):
        started = time.monotonic()
        model, tokenizer = load(variant, args)
        report["variants"][variant] = {
            "scores": score(model, tokenizer, args.limit),
            "seconds": round(time.monotonic() - started, 1),
        }
        print(variant, report["variants"][variant], flush=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    base = report["variants"].get("bf16", {}).get("scores")
    if base:
        verdicts = {v: judge(r["scores"], base, MAX_SCORE_DROP) for v, r in report["variants"].items() if v != "bf16"}
        report["max_score_drop"] = MAX_SCORE_DROP
        report["verdicts"] = {v: {"deltas": j.deltas, "passed": j.passed} for v, j in verdicts.items()}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report.get("verdicts"), indent=1))


if __name__ == "__main__":
    main()
