"""serve-app plan: GPU memory for weights and KV cache, concurrency at a context length, smallest TP."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.quantize.architectures import PRESETS, ModelShape, UnknownModelError, preset, shape_from_hf_config
from serve_app.quantize.planner import GIB, GPUS, Plan, PlanRequest, plan_with_smallest_tp
from serve_app.quantize.report import checkpoint_bytes

QUANTIZATIONS = ["none", "awq", "gptq", "w8a8-int8", "fp8", "fp8-dynamic", "int8-weight-only", "bitsandbytes"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="capacity plan: weights, KV cache, concurrency and the smallest TP for a GPU")
    p.add_argument(
        "--model",
        required=True,
        help=f"a preset ({', '.join(PRESETS)}), a checkpoint folder or config.json, or a serve config YAML",
    )
    p.add_argument("--model-id", default=None, help="which model of a serve config (default: the first)")
    p.add_argument("--gpu", required=True, choices=sorted(GPUS))
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
    from serve_app.config import EMBEDDED_PREFIX, app_args_from_serve_file, load_config

    app = load_config(app_args_from_serve_file(path))
    model = app.model(model_id) if model_id else app.models[0]
    if model is None:
        raise UnknownModelError(f"{path}: no model {model_id!r}")
    if model.shape_preset:
        target = Target(preset(model.shape_preset))
    elif model.source == EMBEDDED_PREFIX + "smollm2-135m-instruct":
        target = Target(preset("smollm2-135m"))
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
