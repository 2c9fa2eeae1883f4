"""The README's quick start ("Two commands") and operator section, run as a user types them.

The commands are not copied here: each section's ```bash blocks are read from README.md and run as
written, from the checkout root, in one bash per section (so `export` and `source` carry over, as in
a terminal), with a fresh HOME (Ray's token comes from the README's own commands, not from
~/.ray of whoever runs the tests) and without any RAY_* variable. A ``<!-- readme-test: MODE -->``
comment on the line before a block changes how it runs: ``background`` (a server: started first,
stopped with SIGINT as Ctrl-C would stop it) or ``skip``. What is checked is what the README
promises: the "Paris" answers, and the replica count it scales to in `serve status`.

It starts Ray as the README does (`ray start`, ports 6379/8265/8000) and `ray stop` stops every Ray
process of this user: run it where no other Ray runs (CI runs the tests one after another).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

README = REPO / "README.md"
QUICK_START = "Two commands"
OPERATING = "Operating on a Ray cluster"
SECTION_TIMEOUT_S = 1200
STOP_TIMEOUT_S = 120
MODE = re.compile(r"<!--\s*readme-test:\s*(\w+)")
BLOCK_MARK = "@@readme-block {}@@"
# The first chat completion's answer in a block's output (the /ready body and SSE events differ).
ANSWER = re.compile(r'"message":\s*\{[^{}]*?"content":\s*("(?:[^"\\]|\\.)*")')
SCALE = re.compile(r"serve-app scale (\S+) (\S+) (\d+)")


@dataclass(frozen=True)
class Block:
    code: str
    mode: str  # "run", "background" or "skip"


def bash_blocks(markdown: str, title: str) -> list[Block]:
    """The top-level ```bash blocks of the ``## `` section whose heading starts with ``title``."""
    blocks: list[Block] = []
    in_section, fence, code, mode, previous = False, None, [], "run", ""
    for line in markdown.splitlines():
        if fence is not None:  # inside a fenced block: a "# comment" there is no heading
            if line.strip() == "```":
                if fence == "bash" and in_section:
                    blocks.append(Block("\n".join(code), mode))
                fence = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            fence, code = line[3:].strip(), []
            mode = m.group(1) if (m := MODE.search(previous)) else "run"
        elif re.match(r"##? ", line):
            in_section = line.startswith(f"## {title}")
        if line.strip():
            previous = line
    assert blocks, f"README.md has no ```bash block under '## {title}'"
    return blocks


def clean_env(home: Path) -> dict[str, str]:
    """A login-like environment: PATH and a locale, a fresh HOME, nothing of Ray's or a venv's. The
    caches are this user's (XDG_CACHE_HOME), where `make test` prepared the model: the README's
    `serve-app prepare-model` finds it there, as on a user's second run, instead of converting it
    once more per section."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8")}
    env["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    assert not any(k.startswith("RAY_") for k in env)
    return env


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One HOME for both sections, as for one user: the operator section then meets the token that
    # `make serve`'s local cluster wrote, the case where a bare `serve deploy` is refused.
    return tmp_path_factory.mktemp("readme-home")


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> bool:
    """Signal the whole process group (a terminal's Ctrl-C does); SIGKILL it if it outlives the wait.
    True if it ended on the signal."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return False
    return True


def default_sigint() -> None:
    """A terminal's foreground job takes Ctrl-C; a pytest started in the background (``cmd &``)
    ignores SIGINT and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def haproxy_binaries() -> list[psutil.Process]:
    """Ray Serve's HAProxy processes (the door on :8000), wherever their parent went."""
    return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].endswith("/bin/haproxy")]


def force_ray_stop(env: dict[str, str]) -> None:
    """Cleanup after a failure, so that later tests find the ports free."""
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=STOP_TIMEOUT_S, check=False)


@contextmanager
def background(blocks: list[Block], env: dict[str, str], logs: Path, stopped: list[bool]) -> Iterator[list[Path]]:
    """Start each background block (a server) in its own process group; SIGINT them on exit and
    record in ``stopped`` whether each ended on it."""
    with ExitStack() as stack:
        paths = []
        for i, block in enumerate(blocks):
            path = logs / f"background-{i}.log"
            out = stack.enter_context(path.open("wb"))
            process = subprocess.Popen(
                ["bash", "-c", block.code],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_sigint,
            )
            stack.callback(lambda p=process: stopped.append(stop_group(p)))
            paths.append(path)
        yield paths


def run_in_one_shell(blocks: list[Block], env: dict[str, str], extra_log: list[Path]) -> list[str]:
    """Run the blocks in order in one bash (stopping at the first failing command); each block's stdout."""
    script = ["set -e -o pipefail"]
    for i, block in enumerate(blocks):
        # On a line of its own even after output without a final newline (curl's JSON).
        script += [f"printf '\\n{BLOCK_MARK.format(i)}\\n'", block.code]
    with subprocess.Popen(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as shell:
        try:
            stdout, stderr = shell.communicate(timeout=SECTION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_group(shell, signal.SIGKILL)
            stdout, stderr = shell.communicate()
    outputs = re.split(r"\n@@readme-block \d+@@\n", stdout)[1:]
    if shell.returncode != 0:
        failed = blocks[max(len(outputs) - 1, 0)].code
        logs = "".join(f"\n--- {p.name} (tail):\n{p.read_text(errors='replace')[-3000:]}" for p in extra_log)
        pytest.fail(
            f"README block failed (exit {shell.returncode}):\n{failed}\n--- stdout (tail):\n{stdout[-3000:]}"
            f"\n--- stderr (tail):\n{stderr[-5000:]}{logs}"
        )
    return outputs


def run_section(title: str, env: dict[str, str], logs: Path) -> tuple[list[Block], list[str]]:
    blocks = [b for b in bash_blocks(README.read_text(), title) if b.mode != "skip"]
    servers = [b for b in blocks if b.mode == "background"]
    commands = [b for b in blocks if b.mode == "run"]
    # Servers start first: a block that runs before a server would otherwise see it already up.
    assert blocks[: len(servers)] == servers, f"'{title}': background blocks must come before the others"
    started, stopped = time.monotonic(), []
    try:
        with background(servers, env, logs, stopped) as server_logs:
            outputs = run_in_one_shell(commands, env, server_logs)
        left = [p.info["cmdline"] for p in haproxy_binaries()]
    finally:
        # Whatever a failed block, or a `ray stop` that gave up waiting, left: later tests need the ports.
        force_ray_stop(env)
        for process in haproxy_binaries():
            process.kill()
    assert all(stopped), f"'{title}': a server did not stop on Ctrl-C's SIGINT within {STOP_TIMEOUT_S} s"
    assert not left, f"'{title}': HAProxy still runs after the section stopped Serve: {left}"
    print(
        f"\nREADME '{title}': {len(commands)} blocks and {len(servers)} server(s) in {time.monotonic() - started:.0f} s"
    )
    return commands, outputs


def first_answer(outputs: list[str]) -> str:
    found = [json.loads(m.group(1)) for out in outputs for m in ANSWER.finditer(out)]
    assert found, f"no chat completion answer in the README blocks' output: {outputs}"
    return found[0]


def test_quick_start(home: Path, tmp_path: Path) -> None:
    _, outputs = run_section(QUICK_START, clean_env(home), tmp_path)
    assert "Paris" in first_answer(outputs)


def serve_status(output: str) -> dict:
    """The YAML that `serve status` printed at the end of a block's output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"(proxies|applications|target_capacity):", line))
    return yaml.safe_load("\n".join(lines[start:]))


def test_operator_path(home: Path, tmp_path: Path) -> None:
    env = clean_env(home)
    commands, outputs = run_section(OPERATING, env, tmp_path)
    assert "Paris" in first_answer(outputs)
    scaled = next(i for i, b in enumerate(commands) if SCALE.search(b.code))
    app, deployment, replicas = SCALE.search(commands[scaled].code).groups()
    assert "serve status" in commands[scaled].code, "the README checks the replicas with serve status"
    states = serve_status(outputs[scaled])["applications"][app]["deployments"][deployment]["replica_states"]
    assert states == {"RUNNING": int(replicas)}
    assert "ray stop" in commands[-1].code, "the section ends by stopping Ray"
    assert (home / ".ray" / "auth_token").is_file(), "the token the README's commands made"


def test_blocks_come_from_their_section_with_their_mode() -> None:
    markdown = (
        "## Two commands\n\n<!-- readme-test: background -->\n```bash\nmake serve\n```\n\n```python\nx = 1\n```\n"
        "```bash\n# a comment, not a heading\ncurl localhost\n```\n  ```bash\n  indented: not top-level\n  ```\n"
        "## Next\n\n```bash\nnot this one\n```\n"
    )
    assert bash_blocks(markdown, "Two commands") == [
        Block("make serve", "background"),
        Block("# a comment, not a heading\ncurl localhost", "run"),
    ]
