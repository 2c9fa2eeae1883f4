"""Does a busy neighbour on the other core slow this core's arithmetic? A decode-like step (one
thread on core 0: a 4096x4096 fp32 matrix, 64 MiB, times 8 vectors, so every step streams the
matrix from memory) timed alone and beside a process on core 1: a Python busy loop at nice 0 and
nice 19, and a memory copy (64 MiB arrays) at nice 19. Part of the flow-control isolation
diagnostic (``benchmarks.flow_control_isolation``): it separates what the hardware shares between
the two cores from what the scheduler does.

    python -m benchmarks.cpu_neighbour --out benchmarks/results/flow-control/isolation/cpu-neighbour.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from serve_app.bench.provenance import commit, module_command

REPO = Path(__file__).resolve().parents[1]
MEMORY_COPY = "import numpy as np\na = np.ones(2**23)\nb = np.empty_like(a)\nwhile True: np.copyto(b, a)"
NEIGHBOURS: dict[str, tuple[str, int] | None] = {
    "none": None,
    "python_loop_nice_0": ("while True: pass", 0),
    "python_loop_nice_19": ("while True: pass", 19),
    "memory_copy_nice_19": (MEMORY_COPY, 19),
}


def step_ms(weights: torch.Tensor, vectors: torch.Tensor, steps: int = 200) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        weights @ vectors
    return (time.perf_counter() - started) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {0})
    weights, vectors = torch.randn(4096, 4096), torch.randn(4096, 8)
    step_ms(weights, vectors, 20)  # warm-up
    results: dict[str, object] = {"command": module_command("benchmarks.cpu_neighbour"), "commit": commit(REPO)}
    medians: dict[str, list[float]] = {name: [] for name in NEIGHBOURS}
    for _ in range(args.rounds):
        for name, neighbour in NEIGHBOURS.items():
            proc = None
            if neighbour is not None:
                code, nice = neighbour
                command = ["taskset", "-c", "1", "nice", "-n", str(nice), sys.executable, "-c", code]
                proc = subprocess.Popen(command)
                time.sleep(1)
            try:
                medians[name].append(round(sorted(step_ms(weights, vectors) for _ in range(5))[2], 3))
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    results["step_ms_median_per_round"] = medians
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
