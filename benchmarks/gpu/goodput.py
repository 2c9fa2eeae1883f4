"""Goodput at an SLO on one GPU: plain vLLM (bf16, its defaults) against the stack as
``serve-app plan --goal`` configures it (issue #21). Phases, each one device call on the same warm
machine (servers outlive a call: they run in sessions of their own):

    python benchmarks/gpu/goodput.py gate    --out $OUT   # SmolLM2 (real weights): each FP8 variant vs bf16
                                                          # (--gate-variants fp8-dynamic: a subset)
    python benchmarks/gpu/goodput.py profile --out $OUT   # 8B shape: bf16, fp8, fp8-fp8kv profiled; plan; stack
                                                          # (--gate-reports DIR: an earlier gate run's reports;
                                                          # --profile P: steady points, rates from P)
    python benchmarks/gpu/goodput.py serve --out $OUT --profile P --gate-reports G  # plain + stack, no profiling
                                                          # (--variant V: V profiled beside plain's start;
                                                          # --rates R1,R2,..: the ladder's, else from P)
    python benchmarks/gpu/goodput.py profile-variant --out $OUT --profile P --variant fp8-fp8kv
                                                          # one variant alone, added to profile P (then serve;
                                                          # --engine-flags F: more engine flags)
    python benchmarks/gpu/goodput.py ladder  --out $OUT --runs 0:fixed,0:spread   # (round:lengths)s
                                                          # (--window S: seconds of arrivals per rate)

Profile points (``profile_points.py``): ``burst`` (all ``c`` requests at once; ``profile`` without
``--profile``) or ``steady`` (``c`` kept in flight by Poisson arrivals at rates from an earlier
profile's points for the variant, as the flow queue starts requests; whenever an earlier profile
holds the variant: ``serve --variant V``, ``profile-variant``, ``profile --profile P``).

Accuracy evidence comes from the real SmolLM2 (``gate``), speed evidence from the 8B shape with
dummy weights (``profile``, ``ladder``): dummy weights have no accuracy to measure.
``benchmarks/gpu/goodput_report.py`` turns the ladder files into goodput.json, a table and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import compare  # this folder's: models, servers, waiting
import goodput_ladder  # this folder's: the ladder
import profile_points  # this folder's: the points each variant is measured at
import yaml
from goodput_variants import (  # this folder's: what each variant serves, and its gate
    GATE_VARIANTS,
    PROFILED_VARIANTS,
    SHAPE_MODELS,
    gate,
    rate_source_points,
    variant_flags,
)

HERE = Path(__file__).resolve().parent
STATE = Path("/tmp/goodput")  # survives between calls on a warm machine; $OUT does not
GOAL = HERE / "goodput-goal-h200.yaml"
FP8_URL = "http://127.0.0.1:8101"
GIB = 1024**3
# One budget for each server: the share of the GPU the goal gives the stack.
BUDGET_FRACTION = 0.43
SIDE_ENGINE_UTILIZATION = 0.45  # a second engine on the GPU: passes vLLM's free-memory check
# Plain vLLM's KV cache in that budget: the budget minus bf16 weights (13.8 GiB measured for this
# shape) and 3 GiB of activations and CUDA graphs. Set as bytes because two engines starting
# together on one GPU cannot size their caches from free memory (each would count the other's).
BF16_WEIGHTS_GIB, ACTIVATIONS_GIB = 13.8, 3.0
LADDER_LOADS = (0.5, 1.0, 1.25, 1.5, 2.0)  # offered rates, in units of plain vLLM's capacity
INPUT_TOKENS, OUTPUT_TOKENS = 512, 128  # the goal's traffic


def _plain(port: int, extra: list[str], log: str, model: Path = compare.DUMMY) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", compare.MODEL, "--load-format", "dummy", "--port", str(port), *extra]
    return compare._spawn(cmd, Path(log), {"CUDA_VISIBLE_DEVICES": "0"})


def bench_argv(url: str, extra: list[str]) -> list[str]:
    """``vllm bench serve``'s arguments for the goal's traffic against ``url``, then ``extra``."""
    argv = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", compare.MODEL]
    argv += ["--tokenizer", str(compare.DUMMY), "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS)]
    return [*argv, "--random-output-len", str(OUTPUT_TOKENS), "--ignore-eos", *extra]


def _bench(url: str, extra: list[str]) -> dict:
    return compare.vllm_bench.measure(bench_argv(url, extra))  # in this process: vLLM imported once for all runs


def _profile_points(url: str, batched_tokens: int | None, earlier: list[dict] | None = None) -> list[dict]:
    """Burst points, or steady ones at rates from ``earlier`` (this variant's points in an earlier profile)."""
    return profile_points.measure(lambda extra: _bench(url, extra), batched_tokens, earlier, OUTPUT_TOKENS, url)


def engine_batched_tokens(log: Path) -> int | None:
    """The engine's own max_num_batched_tokens, as its start-up log states it (the profile's points
    were measured with it, and the planner keeps it)."""
    found = re.findall(r"max_num_batched_tokens=(\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def _profile_alone(
    variant: str, flags: list[str], kv_bytes: int, timeout_s: float, earlier: list[dict] | None = None
) -> list[dict]:
    log = Path(f"/tmp/plain-{variant}.log")
    # vLLM still checks free memory >= utilization x total at start-up, after plain bf16 (starting
    # beside it) has taken its share: the default 0.92 fails there; the KV size is fixed by kv_bytes.
    memory = ["--gpu-memory-utilization", str(SIDE_ENGINE_UTILIZATION)]
    model = SHAPE_MODELS.get(variant, compare.DUMMY)
    proc = _plain(8101, [*flags, "--kv-cache-memory-bytes", str(kv_bytes), *memory], str(log), model)
    compare.wait_for(FP8_URL + "/health", timeout_s, proc)
    points = _profile_points(FP8_URL, engine_batched_tokens(log), earlier)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return points


def profile(out: Path, timeout_s: float, earlier: dict[str, list[dict]]) -> None:
    """bf16 and fp8 side by side, profiled, then fp8 with an FP8 KV cache; the planner on gate
    reports + profile; plain bf16 stays for the ladder and the stack starts with the planner's config.
    ``earlier``: an earlier profile's points per variant, for steady points (none: burst)."""
    compare.stop_servers()
    compare.prepare_models()
    total = _gpu_memory_bytes()
    kv_bytes = _plain_kv_bytes(total)
    bf16_log = Path("/tmp/plain.log")
    bf16 = _plain(8100, ["--dtype", "bfloat16", "--kv-cache-memory-bytes", str(kv_bytes)], str(bf16_log))
    fp8_log = Path("/tmp/plain-fp8.log")
    fp8 = _plain(8101, [*variant_flags("fp8"), "--kv-cache-memory-bytes", str(kv_bytes)], str(fp8_log))
    started = time.monotonic()
    for url, proc in ((compare.PLAIN_URL, bf16), (FP8_URL, fp8)):
        compare.wait_for(url + "/health", timeout_s, proc)
    engines_s = time.monotonic() - started
    variants = {"bf16": _profile_points(compare.PLAIN_URL, engine_batched_tokens(bf16_log), earlier.get("bf16"))}
    variants["fp8"] = _profile_points(FP8_URL, engine_batched_tokens(fp8_log), earlier.get("fp8"))
    os.killpg(fp8.pid, signal.SIGTERM)
    fp8.wait(timeout=60)
    kv_flags = variant_flags("fp8-fp8kv")
    variants["fp8-fp8kv"] = _profile_alone("fp8-fp8kv", kv_flags, kv_bytes, timeout_s, earlier.get("fp8-fp8kv"))
    (STATE / "profile.json").write_text(json.dumps({"gpu": "h200", "variants": variants}, indent=1))
    plan_and_start_stack(out, {"engines_ready_s": engines_s, "plain_kv_cache_bytes": kv_bytes, "gpu_bytes": total})


def profile_variant(out: Path, earlier_profile: Path, variant: str, timeout_s: float, extra: list[str]) -> None:
    """One variant profiled alone, in the same KV budget as the profile phase's engines, and added
    to an earlier profile: that phase's three engines do not fit one device call. Steady points
    when that profile already holds the variant (its rates), else burst. ``extra``: engine flags
    past the variant's (a scheduler setting to compare; its points say the max_num_batched_tokens)."""
    flags = [*variant_flags(variant), *extra]
    compare.stop_servers()
    compare.prepare_models()
    kv_bytes = _plain_kv_bytes(_gpu_memory_bytes())
    data = json.loads(earlier_profile.read_text())
    earlier = data["variants"].get(variant)
    data["variants"][variant] = _profile_alone(variant, flags, kv_bytes, timeout_s, earlier)
    (STATE / "profile.json").write_text(json.dumps(data, indent=1))
    shutil.copy(STATE / "profile.json", out / "profile.json")


def serve(out: Path, earlier_profile: Path, timeout_s: float, variant: str | None, rates: list[float] | None) -> None:
    """Plain bf16 for the ladder, then the stack planned on an earlier profile (the profile phase
    skipped to save device time): that profile's engines ran vLLM's defaults, whose
    max_num_batched_tokens this plain engine's log states, so its points are marked with it.
    With ``variant``, that variant starts beside plain bf16 and is profiled into the profile first
    (one engine start's time instead of two), at steady load with rates from its earlier points (or
    goodput_variants.RATE_SOURCES' variant's; burst when the profile has neither): its points replace
    the earlier ones."""
    compare.stop_servers()
    compare.prepare_models()
    total = _gpu_memory_bytes()
    kv_bytes = _plain_kv_bytes(total)
    log = Path("/tmp/plain.log")
    started = time.monotonic()
    bf16 = _plain(8100, ["--dtype", "bfloat16", "--kv-cache-memory-bytes", str(kv_bytes)], str(log))
    data = json.loads(earlier_profile.read_text())
    # The ladder's rates stay the earlier profile's (its largest closed loop of bf16), even when
    # bf16 itself is re-profiled here: rounds of different runs then share their offered loads.
    rates = rates or ladder_rates(data["variants"]["bf16"])
    if variant:  # starts while plain bf16 does
        earlier = rate_source_points(data["variants"], variant)
        data["variants"][variant] = _profile_alone(variant, variant_flags(variant), kv_bytes, timeout_s, earlier)
    compare.wait_for(compare.PLAIN_URL + "/health", timeout_s, bf16)
    engines_s = time.monotonic() - started
    batched = engine_batched_tokens(log)
    for points in data["variants"].values():
        for point in points:
            point.update({"max_num_batched_tokens": batched} if batched else {})
    data["engine_setting"] = f"max_num_batched_tokens {batched}, read from plain vLLM's start-up log in this run"
    (STATE / "profile.json").write_text(json.dumps(data, indent=1))
    meta = {"plain_ready_s": engines_s, "plain_kv_cache_bytes": kv_bytes, "gpu_bytes": total, "rates": rates}
    plan_and_start_stack(out, meta)


def ladder_rates(bf16_points: list[dict]) -> list[float]:
    capacity = bf16_points[-1]["output_tokens_per_s"] / OUTPUT_TOKENS  # requests/s, largest closed loop
    return [round(capacity * load, 1) for load in LADDER_LOADS]


def plan_and_start_stack(out: Path, meta: dict) -> None:
    if "rates" not in meta:
        meta["rates"] = ladder_rates(json.loads((STATE / "profile.json").read_text())["variants"]["bf16"])
    plan = [sys.executable, "-m", "serve_app.cli", "plan", "--goal", str(GOAL), "--gate-reports", str(STATE / "gate")]
    plan += ["--profile", str(STATE / "profile.json"), "--out", str(STATE / "planned.yaml")]
    subprocess.run(plan, cwd=compare.REPO, check=True)
    write_stack_config(STATE / "planned.yaml", STATE / "stack.yaml")
    (STATE / "meta.json").write_text(json.dumps(meta, indent=1))
    stack_cmd = [shutil.which("serve") or "serve", "run", str(STATE / "stack.yaml")]
    compare._spawn(stack_cmd, Path("/tmp/stack.log"), compare._stack_env("0", "haproxy"))
    for name in ("profile.json", "planned.yaml", "plan.json", "stack.yaml", "meta.json"):
        shutil.copy(STATE / name, out / name)


def write_stack_config(planned: Path, out: Path) -> None:
    """The planner's config with dummy weights (no 8B checkpoint is on the machine). A quantized
    dummy folder also gets ``allow_ungated``: dummy weights have nothing to evaluate, the planner's
    gate verdict for the variant is SmolLM2's, and the deployment gate is waived by name."""
    config = yaml.safe_load(planned.read_text())
    changes = ["engine_options.load_format: dummy"]
    for model in config["applications"][0]["args"]["models"]:
        model.setdefault("engine_options", {})["load_format"] = "dummy"
        if model.get("source") in {str(folder) for folder in SHAPE_MODELS.values()}:
            model["allow_ungated"] = True
            changes.append("allow_ungated: true (a dummy-weight checkpoint folder)")
    header = "".join(line + "\n" for line in planned.read_text().splitlines() if line.startswith("#"))
    out.write_text(header + f"# + {'; '.join(changes)} (goodput.py)\n" + yaml.safe_dump(config))


def _plain_kv_bytes(gpu_bytes: int) -> int:
    """Plain vLLM's KV cache in the shared budget (see BF16_WEIGHTS_GIB)."""
    return int(BUDGET_FRACTION * gpu_bytes - (BF16_WEIGHTS_GIB + ACTIVATIONS_GIB) * GIB)


def _gpu_memory_bytes() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["gate", "profile", "profile-variant", "serve", "ladder"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--runs", default="0:fixed", help="ladder: round:lengths pairs, lengths fixed or spread")
    parser.add_argument("--window", type=float, default=goodput_ladder.LADDER_SECONDS, help="ladder: seconds per rate")
    parser.add_argument("--gate-reports", type=Path, help="profile, serve: earlier gate reports (no gate phase)")
    parser.add_argument("--profile", type=Path, help="serve, profile-variant, profile: an earlier profile.json")
    variants = [v for v, _ in PROFILED_VARIANTS]
    parser.add_argument("--variant", choices=variants, help="profile-variant, serve: profile it")
    parser.add_argument("--engine-flags", default="", help="profile-variant: more engine flags, e.g. a scheduler's")
    parser.add_argument("--rates", help="serve: the ladder's requests/s, comma-separated (default: from --profile)")
    gated = ",".join(v for v, _ in GATE_VARIANTS)
    parser.add_argument("--gate-variants", default=gated, help="gate: comma-separated subset of %(default)s")
    args = parser.parse_args()
    if args.phase in ("serve", "profile-variant") and args.profile is None:
        parser.error(f"{args.phase} needs --profile (an earlier profile.json)")
    if args.phase == "profile-variant" and args.variant is None:
        parser.error("profile-variant needs --variant")
    args.out.mkdir(parents=True, exist_ok=True)
    STATE.mkdir(exist_ok=True)
    try:
        if args.phase == "gate":
            gate(args.out, args.gate_variants.split(","), STATE)
        elif args.phase == "profile-variant":
            profile_variant(args.out, args.profile, args.variant, args.timeout, shlex.split(args.engine_flags))
        elif args.phase in ("profile", "serve"):
            if args.gate_reports:
                shutil.copytree(args.gate_reports, STATE / "gate", dirs_exist_ok=True)
            if args.phase == "profile":
                earlier = json.loads(args.profile.read_text())["variants"] if args.profile else {}
                profile(args.out, args.timeout, earlier)
            else:
                rates = [float(r) for r in args.rates.split(",")] if args.rates else None
                serve(args.out, args.profile, args.timeout, args.variant, rates)
        else:
            compare.wait_for(compare.STACK_URL + "/ready", args.timeout)
            compare.wait_for(compare.PLAIN_URL + "/health", 60)
            rates = json.loads((STATE / "meta.json").read_text())["rates"]
            servers = [("plain", compare.PLAIN_URL), ("stack", compare.STACK_URL)]
            for pair in args.runs.split(","):
                round_no, lengths = pair.split(":")
                goodput_ladder.ladder(_bench, servers, args.out, rates, (int(round_no), lengths), args.window)
    finally:
        compare.collect_logs(args.out)


if __name__ == "__main__":
    main()
