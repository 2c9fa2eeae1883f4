"""quantization_report.json assembly, checkpoint sizes and fingerprints."""

from __future__ import annotations

from pathlib import Path

from serve_app.quantize.report import (
    TensorStats,
    build_quantization_report,
    checkpoint_bytes,
    checkpoint_fingerprint,
    merge_stats,
    per_layer_table,
)


def test_stats_are_grouped_per_layer_and_other_tensors_ignored() -> None:
    stats = {
        "model.layers.0.mlp.down_proj.weight_scale": TensorStats(0.01, 0.5, 0.1, 10),
        "model.layers.0.mlp.down_proj.weight_zero_point": TensorStats(-8, 7, 0.5, 10),
        "model.layers.0.mlp.down_proj.weight_packed": TensorStats(0, 1, 0, 1),
        "model.embed_tokens.weight": TensorStats(0, 1, 0, 1),
    }
    table = per_layer_table(stats)
    assert list(table) == ["model.layers.0.mlp.down_proj"]
    assert table["model.layers.0.mlp.down_proj"]["zero_point"]["min"] == -8


def test_merge_stats_weights_means_by_count() -> None:
    merged = merge_stats([TensorStats(0.0, 1.0, 1.0, 1), TensorStats(-1.0, 0.5, 4.0, 3)])
    assert merged == TensorStats(-1.0, 1.0, 3.25, 4)
    assert merge_stats([]) is None


def test_sizes_and_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "tokenizer.json").write_text("{}" * 50)
    assert checkpoint_bytes(tmp_path) == 100
    before = checkpoint_fingerprint(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert checkpoint_fingerprint(tmp_path) == before  # tokenizers do not change the weights
    (tmp_path / "model.safetensors").write_bytes(b"x" * 99 + b"y")  # same size, other weights
    assert checkpoint_fingerprint(tmp_path) != before
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    assert checkpoint_fingerprint(tmp_path) == before
    (tmp_path / "config.json").write_text('{"quantization_config": {}}')
    assert checkpoint_fingerprint(tmp_path) != before


def test_report_fields() -> None:
    report = build_quantization_report(
        method="awq",
        scheme="W4A16_ASYM",
        group_size=64,
        source="/m",
        calibration={"sha256": "ab", "samples": 8},
        tensor_stats={
            "a.weight_scale": TensorStats(0.1, 0.2, 0.15, 2),
            "b.weight_scale": TensorStats(0.3, 0.4, 0.35, 2),
        },
        wall_time_s=12.345,
        size_before_bytes=400,
        size_after_bytes=100,
        fingerprint="f",
        versions={"llmcompressor": "0.14.0.1"},
        command=["serve-app", "quantize"],
    )
    assert report["compression_ratio"] == 4.0 and report["wall_time_s"] == 12.35
    assert report["quantized_layers"] == 2
    assert report["scale_summary"] == {"min": 0.1, "max": 0.4, "mean": 0.25, "count": 4}
