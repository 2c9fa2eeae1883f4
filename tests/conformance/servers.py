"""The two sides of the comparison: plain vLLM's OpenAI server (one for the chat model, one for the
embedding model: a vLLM server serves one model) and the stack (one Serve app with both models).

Plain vLLM is started as the benchmarks start it (``benchmarks/seed_table.plain_vllm_command``) plus
the flags matching configs/local.yaml's ``openai_server`` (hermes tool parser, auto tool choice) and
the engine's seed; the embedding server adds ``--runner pooling``, as the stack's embed task does.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.seed_table import plain_vllm_command, start_plain_vllm, stop, wait_ready
from serve_app.config import AppConfig, app_args_from_serve_file, load_config
from serve_app.models.embedded import minilm_path, resolve_source
from serve_app.ports import free_port
from tests.conformance.cases import CHAT_MODEL, EMBED_MODEL
from tests.integration.conftest import PLAIN_VLLM_ENV

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600  # several engines start at once on 2 shared cores
CHAT_FLAGS = ["--seed", "0", "--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--host", "127.0.0.1"]


@dataclass(frozen=True)
class Side:
    """Where one side answers: base URLs (no ``/v1``) for the chat and the embedding model."""

    name: str
    chat_url: str
    embed_url: str
    is_stack: bool = False

    def url(self, server: str) -> str:
        return self.embed_url if server == "embed" else self.chat_url


def chat_command(port: int) -> list[str]:
    model = resolve_source(f"embedded:{CHAT_MODEL}", None)
    return [*plain_vllm_command(model, port), *CHAT_FLAGS]


def embed_command(port: int) -> list[str]:
    command = plain_vllm_command(minilm_path(), port, max_model_len=256)
    command[command.index("--served-model-name") + 1] = EMBED_MODEL
    return [*command, "--runner", "pooling", "--host", "127.0.0.1"]


@dataclass
class PlainServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self) -> None:
        try:
            wait_ready(self.proc, f"{self.url}/health", START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as err:
            tail = self.log.read_text(errors="replace").splitlines()[-40:]
            raise RuntimeError(f"{err}\n--- end of {self.log}:\n" + "\n".join(tail)) from None


def launch(kind: str, log_dir: Path) -> PlainServer:
    """Start one plain vLLM server in its own session (so ``stop`` ends its whole tree); not yet ready."""
    port = free_port()
    command = chat_command(port) if kind == "chat" else embed_command(port)
    log = log_dir / f"plain-{kind}-{port}.log"
    proc = start_plain_vllm(command, log, REPO, env=PLAIN_VLLM_ENV)
    return PlainServer(f"http://127.0.0.1:{port}", proc, log)


def start_plain(name: str, log_dir: Path, stack: contextlib.ExitStack) -> tuple[Side, list[PlainServer]]:
    """Launch a chat and an embedding server, stopped when ``stack`` closes; the caller waits for them
    (``PlainServer.wait``), so that every server of the session starts at the same time."""
    chat, embed = launch("chat", log_dir), launch("embed", log_dir)
    stack.callback(stop, chat.proc)
    stack.callback(stop, embed.proc)
    return Side(name, chat.url, embed.url), [chat, embed]


def stack_config() -> AppConfig:
    """configs/local.yaml's app (its chat model with its ``openai_server`` options) plus the
    embedding model of configs/embeddings.yaml with one replica, in one app."""
    args = app_args_from_serve_file(REPO / "configs" / "local.yaml")
    embed = app_args_from_serve_file(REPO / "configs" / "embeddings.yaml")["models"][0]
    embed.pop("autoscaling", None)
    args["models"].append(embed | {"num_replicas": 1})
    return load_config(args)


@contextlib.contextmanager
def stack_starter() -> Iterator[Callable[[], Side]]:
    """Starts a fresh local Ray and Serve (``running_serve``; never a cluster another job started) and
    yields ``deploy()``, which deploys ``stack_config`` and returns the side once /ready answers.
    Ray starts first, before the plain servers load the cores: its raylet gives up early under load."""
    from tests.integration.conftest import running_serve

    with running_serve(address="local") as start:

        def deploy() -> Side:
            app = start(stack_config())
            return Side("stack", app.base_url, app.base_url, is_stack=True)

        yield deploy
