"""Pure parts of ``saturation.py``: where a saturated engine's time goes, from what the machine
reports. No vLLM, no GPU: unit-tested in ``tests/unit/test_saturation_split.py``.

* The GPU kernels of a torch profiler trace (vLLM's ``/start_profile``, a Chrome trace): the share
  of the traced window in which some kernel ran (busy), and kernel time per category.
* CPU time of a process tree, from ``/proc/<pid>/stat`` snapshots: cores used per process.
* ``nvidia-smi`` utilization samples: their mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Kernel categories, first match wins. Names as CUDA reports them: CUTLASS and cuBLAS/nvjet GEMMs,
# vLLM's int8/FP8 activation quantization, FlashAttention/FlashInfer, Inductor's fused Triton code.
CATEGORIES = (
    ("quantize activations", re.compile(r"quant", re.I)),
    ("attention", re.compile(r"flash|fmha|attn|attention|paged|reshape_and_cache", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|nvjet|cublas|xmma|matmul|_mm_|scaled_mm|sm90", re.I)),
    ("fused elementwise (inductor)", re.compile(r"^triton_", re.I)),
    ("sampling", re.compile(r"sample|topk|top_k|argmax|softmax|gumbel", re.I)),
)
OTHER = "other"
TOP_KERNELS = 15
NAME_CHARS = 160


def category(kernel_name: str) -> str:
    for name, pattern in CATEGORIES:
        if pattern.search(kernel_name):
            return name
    return OTHER


def gpu_kernels(trace: Mapping) -> list[tuple[float, float, str]]:
    """(start us, duration us, name) of each GPU kernel in a Chrome trace (``traceEvents``)."""
    kernels = []
    for event in trace.get("traceEvents", []):
        if event.get("ph") == "X" and event.get("cat") == "kernel" and "dur" in event:
            kernels.append((float(event["ts"]), float(event["dur"]), str(event.get("name", ""))))
    return sorted(kernels)


def busy_us(kernels: Iterable[tuple[float, float, str]]) -> float:
    """Time in which at least one kernel ran: the union of their intervals (kernels may overlap)."""
    total, end = 0.0, float("-inf")
    for start, duration, _ in sorted(kernels):
        stop = start + duration
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def kernel_split(trace: Mapping) -> dict:
    """Window, busy share and kernel time per category (shares of all kernel time), plus the
    kernels that took the most time (names cut to NAME_CHARS)."""
    kernels = gpu_kernels(trace)
    if not kernels:
        return {"kernels": 0}
    window = max(s + d for s, d, _ in kernels) - kernels[0][0]
    kernel_time = sum(d for _, d, _ in kernels)
    per_category: dict[str, float] = {}
    per_name: dict[str, float] = {}
    for _, duration, name in kernels:
        per_name[name] = per_name.get(name, 0.0) + duration
    for name, duration in per_name.items():  # each distinct name matched once
        per_category[category(name)] = per_category.get(category(name), 0.0) + duration
    top = sorted(per_name.items(), key=lambda item: -item[1])[:TOP_KERNELS]
    return {
        "kernels": len(kernels),
        "window_ms": round(window / 1000, 2),
        "busy_share": round(busy_us(kernels) / window, 4),
        "kernel_ms": round(kernel_time / 1000, 2),
        "category_share": {k: round(v / kernel_time, 4) for k, v in sorted(per_category.items(), key=lambda i: -i[1])},
        "top_kernels": [
            {"name": name[:NAME_CHARS], "category": category(name), "share": round(t / kernel_time, 4)}
            for name, t in top
        ],
    }


def parse_stat(text: str) -> tuple[int, str, float]:
    """(parent pid, command, user + system clock ticks) from one ``/proc/<pid>/stat`` line. The
    command sits in parentheses and may hold spaces, so fields are counted after its last ')'."""
    head, _, rest = text.rpartition(")")
    command = head.partition("(")[2]
    fields = rest.split()
    # after the command: state(0) ppid(1) ... utime(11) stime(12)
    return int(fields[1]), command, float(fields[11]) + float(fields[12])


def descendants(parents: Mapping[int, int], root: int) -> list[int]:
    """``root`` and every process below it, from a pid -> parent pid map."""
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier and pid not in found]
        found += frontier
    return found


def cores_used(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]], wall_s: float, ticks_per_s: float
) -> dict[str, float]:
    """CPU cores each process used between two snapshots (pid -> (command, ticks)), keyed
    ``command[pid]``; a process absent from either snapshot is left out."""
    used = {}
    for pid, (command, ticks) in after.items():
        if pid in before:
            used[f"{command}[{pid}]"] = round((ticks - before[pid][1]) / ticks_per_s / wall_s, 3)
    return used


def mean_utilization(lines: Iterable[str]) -> float | None:
    """Mean of ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits`` samples."""
    values = [float(line) for line in (raw.strip() for raw in lines) if re.fullmatch(r"\d+(\.\d+)?", line)]
    return round(sum(values) / len(values), 1) if values else None
