"""The conformance suite's servers: plain vLLM (the reference) and the target, each started once for
the whole package.

    pytest tests/conformance                           # target: the stack (Ray Serve + router + vLLM)
    pytest tests/conformance --conformance-stack=plain # target: a second plain vLLM (checks the suite)

The package scope (not the session) ends the stack's Ray before tests/integration starts its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conformance.servers import PlainServer, Side, stack_starter, start_plain


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption(
        "--conformance-stack",
        choices=["stack", "plain"],
        default="stack",
        help="what the conformance suite compares with plain vLLM: the stack (default), or a second "
        "plain vLLM server (to check the suite itself)",
    )


@dataclass(frozen=True)
class Sides:
    reference: Side
    target: Side


@pytest.fixture(scope="package")
def sides(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    mode = pytestconfig.getoption("conformance_stack", default="stack")
    log_dir = tmp_path_factory.mktemp("conformance-servers")
    with contextlib.ExitStack() as stack:
        deploy = None if mode == "plain" else stack.enter_context(stack_starter())
        reference, servers = start_plain("plain-vllm", log_dir, stack)
        target: Side
        if deploy is None:
            target, more = start_plain("plain-vllm-2", log_dir, stack)
            servers += more
        else:
            target = deploy()  # while the plain servers start; blocks until the app's /ready
        _wait(servers)
        yield Sides(reference, target)


def _wait(servers: list[PlainServer]) -> None:
    for server in servers:
        server.wait()
