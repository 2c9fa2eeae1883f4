"""serve-app plan: GPU memory for weights and KV cache, concurrency at a context length, smallest TP.

With ``--goal`` it plans a deployment instead: the variant, KV dtype, engine and admission settings
that serve a traffic shape under an SLO on a GPU type, written as a serve config with its reasons
(serve_app.quantize.goal_planner)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serve_app.models.shapes import PRESETS, ModelShape, UnknownModelError, preset, shape_from_hf_config
from serve_app.quantize.gate_reports import GateVerdict, read_gate_reports
from serve_app.quantize.goal import Goal, parse_goal
from serve_app.quantize.goal_output import header, plan_json, render_yaml, serve_config
from serve_app.quantize.goal_planner import plan_goal
from serve_app.quantize.planner import GIB, GPUS, Plan, PlanRequest, plan_with_smallest_tp
from serve_app.quantize.report import checkpoint_bytes
from serve_app.quantize.speed import parse_profile
from serve_app.quantize.variants import all_variants

QUANTIZATIONS = ["none", "awq", "gptq", "w8a8-int8", "fp8", "fp8-dynamic", "int8-weight-only", "bitsandbytes"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="capacity plan: weights, KV cache, concurrency and the smallest TP for a GPU")
    p.add_argument(
        "--model",
        default=None,
        help=f"a preset ({', '.join(PRESETS)}), a checkpoint folder or config.json, or a serve config YAML",
    )
    p.add_argument("--model-id", default=None, help="which model of a serve config (default: the first)")
    p.add_argument("--gpu", default=None, choices=sorted(GPUS), help="required without --goal")
    p.add_argument("--quantization", default=None, choices=QUANTIZATIONS, help="default: none, or the config's")
    p.add_argument("--group-size", type=int, default=128, help="group size of int4 methods")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: 1, or the config's)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the config's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default: bfloat16")
    p.add_argument("--kv-cache-dtype", default=None, choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    goal = p.add_argument_group("planning for a goal (GPU type, SLO, traffic shape)")
    goal.add_argument("--goal", type=Path, default=None, help="goal YAML; plans a serve config (see docs/planner.md)")
    goal.add_argument("--gate-reports", type=Path, default=None, help="folder of <variant>.json evaluation reports")
    goal.add_argument("--profile", type=Path, default=None, help="measured speeds per variant (JSON)")
    goal.add_argument("--out", type=Path, default=None, help="serve config to write (plan.json beside it)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Target:
    shape: ModelShape
    measured_weight_bytes: int | None = None  # a quantized checkpoint's files
    defaults: dict[str, Any] = field(default_factory=dict)  # from a serve config's model entry


def _folder_target(path: Path) -> Target:
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UnknownModelError(f"{path} holds no config.json")
    config = json.loads(config_file.read_text())
    shape = shape_from_hf_config(config_file.parent.name, config)
    measured = checkpoint_bytes(path) if path.is_dir() and config.get("quantization_config") else None
    return Target(shape, measured or None)


def _serve_config_target(path: Path, model_id: str | None) -> Target:
    from serve_app.config import app_args_from_serve_file, load_config
    from serve_app.models.embedded import EMBEDDED_PREFIX, EMBEDDED_SHAPE_PRESETS

    app = load_config(app_args_from_serve_file(path))
    model = app.model(model_id) if model_id else app.models[0]
    if model is None:
        raise UnknownModelError(f"{path}: no model {model_id!r}")
    if model.shape_preset:
        target = Target(preset(model.shape_preset))
    elif model.source.removeprefix(EMBEDDED_PREFIX) in EMBEDDED_SHAPE_PRESETS:
        target = Target(preset(EMBEDDED_SHAPE_PRESETS[model.source.removeprefix(EMBEDDED_PREFIX)]))
    else:
        target = _folder_target(Path(model.source).expanduser())
    defaults = {
        "quantization": model.quantization,
        "dtype": None if model.dtype == "auto" else model.dtype,
        "kv_cache_dtype": model.kv_cache_dtype,
        "tp": model.tensor_parallel_size,
        "max_model_len": model.max_model_len,
    }
    return Target(target.shape, target.measured_weight_bytes, defaults)


def load_target(model: str, model_id: str | None = None) -> Target:
    if model.lower() in PRESETS:
        return Target(preset(model))
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _serve_config_target(path, model_id)
    if path.exists():
        return _folder_target(path)
    raise UnknownModelError(f"{model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint or config file")


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB ({n / 1e9:.2f} GB)"


def render(p: Plan) -> str:
    rows = [
        ("model / gpu", f"{p.model} on {p.gpu}, tp={p.tensor_parallel_size}, quantization={p.quantization}"),
        ("weights (total)", _gib(p.weight_bytes_total)),
        ("weights per GPU", _gib(p.weight_bytes_per_gpu)),
        ("KV per token", f"{p.kv_bytes_per_token / 1024:8.1f} KiB (per GPU {p.kv_bytes_per_token_per_gpu / 1024:.1f})"),
        ("usable per GPU", _gib(p.usable_bytes_per_gpu)),
        ("reserve per GPU", _gib(p.reserve_bytes_per_gpu) + "  (runtime overhead + activations)"),
        ("KV budget per GPU", _gib(p.kv_budget_bytes_per_gpu)),
        ("KV cache tokens", f"{p.kv_cache_tokens:>11,}"),
        (f"max seqs @ {p.max_model_len}", f"{p.max_concurrent_sequences:>11,}"),
        ("fits", "yes" if p.fits else "NO"),
        ("smallest TP that fits", str(p.smallest_fitting_tp) if p.smallest_fitting_tp else "none up to 8"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def build_request(args: argparse.Namespace, target: Target) -> PlanRequest:
    def pick(name: str, fallback: Any) -> Any:
        given = getattr(args, name)
        return given if given is not None else (target.defaults.get(name) or fallback)

    quantization = pick("quantization", "none")
    max_model_len = pick("max_model_len", None)
    if max_model_len is None:
        raise UnknownModelError("--max-model-len is required unless the serve config sets max_model_len")
    return PlanRequest(
        shape=target.shape,
        gpu=GPUS[args.gpu],
        max_model_len=max_model_len,
        tensor_parallel_size=pick("tp", 1),
        quantization=None if quantization == "none" else quantization,
        group_size=args.group_size,
        dtype=pick("dtype", "bfloat16"),
        kv_cache_dtype=pick("kv_cache_dtype", "auto"),
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        # A quantized checkpoint's own files beat the formula unless a method is forced.
        checkpoint_weight_bytes=target.measured_weight_bytes if args.quantization is None else None,
    )


def run(args: argparse.Namespace) -> int:
    if args.goal is not None:
        return run_goal(args)
    if args.model is None or args.gpu is None:
        print("serve-app plan: error: --model and --gpu are required (or give --goal)", file=sys.stderr)
        return 2
    if not 0 < args.gpu_memory_utilization <= 1:
        print("serve-app plan: error: --gpu-memory-utilization must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        request = build_request(args, load_target(args.model, args.model_id))
    except (UnknownModelError, ValueError) as err:
        print(f"serve-app plan: error: {err}", file=sys.stderr)
        return 2
    result = plan_with_smallest_tp(request)
    print(json.dumps(result.to_dict(), indent=2) if args.json else render(result))
    return 0 if result.fits else 1


def _read_goal_inputs(args: argparse.Namespace) -> tuple[Goal, ModelShape, dict[str, GateVerdict], dict[str, Any], str]:
    goal = parse_goal(yaml.safe_load(args.goal.read_text()))
    shape = load_target(goal.model).shape
    ids = [v.id for v in all_variants()]
    verdicts = read_gate_reports(args.gate_reports, ids) if args.gate_reports else {}
    profile: dict[str, Any] = {}
    note = ""
    if args.profile:
        profile, skipped = parse_profile(json.loads(args.profile.read_text()), goal.gpu)
        note = skipped or ""
    return goal, shape, verdicts, profile, note


def run_goal(args: argparse.Namespace) -> int:
    """``--goal``: plan the variant and settings, validate the serve config, write it and plan.json."""
    from serve_app.config import ConfigError, load_config

    try:
        goal, shape, verdicts, profile, note = _read_goal_inputs(args)
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"serve-app plan: error: {err}", file=sys.stderr)
        return 2
    result = plan_goal(goal, shape, verdicts, profile, str(args.profile or ""))
    if note:
        result.notes.append(note)
    sidecar = plan_json(result)
    if result.chosen is None:
        print(json.dumps(sidecar, indent=2))
        print(f"serve-app plan: nothing to deploy: {result.choice_reason}", file=sys.stderr)
        return 1
    config = serve_config(result)
    try:
        load_config(app_args_from_config(config))
    except ConfigError as err:  # a planner bug: never write a config the app would refuse
        print(f"serve-app plan: error: the planned config does not validate: {err}", file=sys.stderr)
        return 2
    text = render_yaml(result, config)
    if args.out is None:
        print(text)
        return 0
    args.out.write_text(text)
    sidecar_path = args.out.with_name("plan.json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    print("\n".join(header(result)))
    print(f"wrote {args.out} and {sidecar_path}")
    return 0


def app_args_from_config(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config["applications"][0]["args"])
