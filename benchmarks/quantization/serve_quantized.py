"""Serve a quantized checkpoint through the real stack (Ray Serve router + vLLM replica) and ask it
the golden questions over HTTP.

    python benchmarks/quantization/serve_quantized.py /tmp/q/smollm2-awq-w4g64 \\
        --out benchmarks/results/quantization/served-awq.json

Steps, all recorded in the output JSON:

1. ``build_app`` on the checkpoint without ``allow_ungated``: the deployment gate must refuse it when
   its evaluation failed (the AWQ W4 SmolLM2 checkpoint does: see README.md), and admit it when passed.
2. The app deployed with ``allow_ungated: true`` (only when the gate refused), bf16 + eager, on Ray
   Serve; wait for ``/ready`` (the replica's own golden readiness probe, "Paris").
3. Every golden question sent to ``/v1/chat/completions`` (greedy, the evaluation's 48 tokens);
   replies scored like ``serve-app evaluate`` and compared with the offline replies that
   ``evaluation_report.json`` recorded for the same checkpoint.

Starts Ray and vLLM, so only under ``__main__``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, load_config
from serve_app.ports import free_port
from serve_app.quantize.calibration import DEFAULT_GOLDEN, answer_matches, load_golden, shipped
from serve_app.quantize.eval_worker import ANSWER_MAX_TOKENS
from serve_app.quantize.gate import GateError
from serve_app.quantize.report import EVAL_REPORT

MODEL_ID = "quantized"


def app_config(checkpoint: Path, allow_ungated: bool) -> AppConfig:
    model = {
        "id": MODEL_ID,
        "source": str(checkpoint),
        # vLLM's CPU W4A16 kernel has no fp32 path; bf16 on CPU is correct only in eager mode.
        "dtype": "bfloat16",
        "enforce_eager": True,
        "max_model_len": 1024,
        "readiness_expect": "Paris",
        "readiness_timeout_s": 120,
        "allow_ungated": allow_ungated,
        "ray_actor_options": {"num_cpus": 1, "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }
    return load_config({"models": [model]})


def gate_verdict(checkpoint: Path) -> dict[str, Any]:
    """What ``build_app`` says about the checkpoint when the config does not opt out of the gate."""
    from serve_app.app import build_app

    try:
        build_app(app_config(checkpoint, allow_ungated=False))
    except GateError as err:
        return {"refused": True, "message": str(err)}
    return {"refused": False, "message": ""}


def wait_ready(base_url: str, timeout_s: float) -> float:
    return wait_until_ok(f"{base_url}/ready", timeout_s, period_s=2, request_timeout_s=30)


def ask(base_url: str, question: str) -> tuple[str, float]:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0.0,
        "max_tokens": ANSWER_MAX_TOKENS,
    }
    started = time.monotonic()
    resp = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"], time.monotonic() - started


def offline_replies(checkpoint: Path) -> dict[str, str]:
    """The replies ``serve-app evaluate`` got from offline vLLM for this checkpoint, by question."""
    path = checkpoint / EVAL_REPORT
    if not path.is_file():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    return {g["question"]: g["reply"] for g in report.get("golden", {}).get("model", [])}


def ask_golden(base_url: str, checkpoint: Path) -> list[dict[str, Any]]:
    offline = offline_replies(checkpoint)
    rows = []
    for item in load_golden(shipped(DEFAULT_GOLDEN)):
        reply, seconds = ask(base_url, item.question)
        row = {"question": item.question, "answer": item.answer, "reply": reply}
        row |= {"correct": answer_matches(reply, item.answer), "seconds": round(seconds, 2)}
        if item.question in offline:
            row["same_as_offline_evaluation"] = reply == offline[item.question]
        rows.append(row)
        print(f"{'ok ' if row['correct'] else 'BAD'} {item.question} -> {reply[:80]!r}", flush=True)
    return rows


def serve_and_ask(checkpoint: Path, allow_ungated: bool, timeout_s: float) -> dict[str, Any]:
    import ray
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.monotonic()
        serve.run(build_app(app_config(checkpoint, allow_ungated)), name="quantized", route_prefix="/", blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        ready_s = wait_ready(base_url, timeout_s)
        models = httpx.get(f"{base_url}/v1/models", timeout=30).json()
        golden = ask_golden(base_url, checkpoint)
        return {
            "ready_after_s": round(time.monotonic() - started, 1),
            "ready_wait_s": round(ready_s, 1),
            "served_models": [m["id"] for m in models.get("data", [])],
            "golden": golden,
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for /ready")
    args = p.parse_args()
    checkpoint = args.checkpoint.resolve()
    gate = gate_verdict(checkpoint)
    print(f"gate without allow_ungated: {'refused' if gate['refused'] else 'admitted'} {gate['message']}", flush=True)
    served = serve_and_ask(checkpoint, allow_ungated=gate["refused"], timeout_s=args.timeout)
    correct = sum(r["correct"] for r in served["golden"])
    result = {
        "checkpoint": str(checkpoint),
        "command": ["python", *sys.argv],
        "stack": "Ray Serve router deployment -> LLMReplica deployment -> vLLM AsyncLLM (CPU, bf16, eager)",
        "gate_without_allow_ungated": gate,
        "deployed_with_allow_ungated": gate["refused"],
        "golden_correct": correct,
        "golden_total": len(served["golden"]),
        **served,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"golden answered through the stack: {correct}/{len(served['golden'])}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
