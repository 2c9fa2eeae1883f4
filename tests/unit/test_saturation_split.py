"""benchmarks/gpu/saturation_split.py and saturation_report.py: the pure parts of the saturation
measurement (issue #21) and its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import saturation_report as report
import saturation_split as split


def _kernel(ts: float, dur: float, name: str) -> dict:
    return {"ph": "X", "cat": "kernel", "ts": ts, "dur": dur, "name": name}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<int8_t>>", "gemm"),
        ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNT", "gemm"),
        ("void vllm::dynamic_scaled_int8_quant_kernel<c10::BFloat16, float>", "quantize activations"),
        ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128>>", "attention"),
        ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>", "attention"),
        ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "fused elementwise (inductor)"),
        ("void at::native::vectorized_elementwise_kernel<4>", "other"),
    ],
)
def test_kernels_are_put_in_their_category(name: str, expected: str) -> None:
    assert split.category(name) == expected


def test_overlapping_kernels_count_once_towards_busy_time() -> None:
    kernels = [(0.0, 10.0, "a"), (5.0, 10.0, "b"), (30.0, 5.0, "c"), (31.0, 1.0, "d")]
    assert split.busy_us(kernels) == 20.0


def test_the_split_gives_the_busy_share_and_each_categorys_share_of_kernel_time() -> None:
    trace = {
        "traceEvents": [
            _kernel(0, 60, "cutlass_gemm"),
            _kernel(60, 20, "flash_fwd"),
            _kernel(100, 20, "dynamic_scaled_int8_quant"),
            {"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 500, "name": "aten::mm"},  # not a kernel
            {"ph": "i", "cat": "kernel", "ts": 400, "name": "marker"},  # not a complete event
        ]
    }
    result = split.kernel_split(trace)
    assert result["kernels"] == 3
    assert result["window_ms"] == 0.12
    assert result["busy_share"] == pytest.approx(100 / 120, abs=1e-4)
    assert result["category_share"] == {"gemm": 0.6, "attention": 0.2, "quantize activations": 0.2}
    assert result["top_kernels"][0] == {"name": "cutlass_gemm", "category": "gemm", "share": 0.6}


def test_a_trace_without_kernels_says_so() -> None:
    assert split.kernel_split({"traceEvents": []}) == {"kernels": 0}


def test_a_stat_line_is_read_past_a_command_with_spaces_and_parentheses() -> None:
    line = "4242 (VLLM::Engine (x) 1) S 4200 4242 4200 0 -1 4194560 1 0 0 0 150 50 0 0 20 0 1 0 1 0 0"
    assert split.parse_stat(line) == (4200, "VLLM::Engine (x) 1", 200.0)


def test_a_process_tree_holds_the_root_and_everything_below_it() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 1, 14: 12}
    assert sorted(split.descendants(parents, 10)) == [10, 11, 12, 14]


def test_cores_used_are_cpu_seconds_over_wall_seconds_for_processes_in_both_snapshots() -> None:
    before = {1: ("api", 100.0), 2: ("core", 0.0), 3: ("gone", 5.0)}
    after = {1: ("api", 300.0), 2: ("core", 400.0), 4: ("new", 50.0)}
    assert split.cores_used(before, after, wall_s=2.0, ticks_per_s=100) == {"api[1]": 1.0, "core[2]": 2.0}


def test_nvidia_smi_samples_average_and_other_lines_are_ignored() -> None:
    assert split.mean_utilization(["100", " 90", "[N/A]", "", "95"]) == 95.0
    assert split.mean_utilization(["[N/A]"]) is None


def _round(round_no: int, engines: dict) -> dict:
    return {"round": round_no, "engines": engines}


def _engine(*throughputs: float, kernels: dict | None = None) -> dict:
    points = [
        {"concurrency": c, "output_tokens_per_s": t, "ttft_p50_ms": 1, "ttft_p99_ms": 2, "tpot_p99_ms": 3}
        for c, t in zip((96, 128), throughputs, strict=False)
    ]
    return {"points": points, "kernels": kernels or {"kernels": 0}}


def test_the_report_puts_engines_of_one_round_side_by_side(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    engines = {"bf16": _engine(100.0, 200.0), "w8a8": _engine(125.0, 260.0), "w8a8-stream8": {"error": "refused"}}
    (run / "saturation-round0.json").write_text(json.dumps(_round(0, engines)))
    measured = report.rounds([run])
    ratios = report.ratio_table(measured)
    assert "| run r0 | w8a8 / bf16 | 96 | 1.250 |" in ratios
    assert "| run r0 | w8a8 / bf16 | 128 | 1.300 |" in ratios
    assert "fp8kv" not in ratios  # no such engine in the round: no ratio
    assert "failed: refused" in report.points_table(measured)


def test_the_report_gives_each_categorys_kernel_milliseconds() -> None:
    kernels = {"kernels": 10, "window_ms": 12.0, "kernel_ms": 10.0, "busy_share": 0.83}
    kernels["category_share"] = {"gemm": 0.6, "attention": 0.3, "quantize activations": 0.1}
    engine = _engine(100.0, kernels=kernels) | {"profiled_run": {"running_at_end": 150.0}}
    table = report.split_table([("run r0", _round(0, {"w8a8": engine}))])
    assert "| run r0 | w8a8 | 150 | 12 | 10 | 83% | 6 (60%) | 3 (30%) | 1 (10%) | 0 (0%) |" in table
