"""Every dashboard query returns data from a real Prometheus scraping the real stack.

Ray Serve + router + a vLLM CPU replica on the embedded model, Ray's metrics agent on a known
port, and a throw-away Prometheus (any 2.x on PATH or in the venv, e.g. the Debian package's binary
that ``make install-prometheus`` unpacks into .venv/bin) scraping it every second. Two waves of
traffic (chat, streamed chat, /generate, an unknown model, a burst over the router's admission
budget) give every counter an increase and every histogram observations; then each query of each
panel must return a finite value.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from serve_app.app import replica_deployment_name
from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, load_config
from serve_app.observability import metrics as m
from serve_app.observability.dashboards import _flow_control_row, adapters, all_dashboards
from serve_app.observability.render import render_from_prometheus, substitute_variables
from serve_app.ports import free_port
from tests.integration.conftest import MetricsServe, RunningApp, local_config

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
# Panels that cannot have data in this scenario, with the reason. Each must really be empty
# (checked below), so the list cannot silently grow past what the scenario explains.
_NO_ADAPTERS = "this scenario's model serves no LoRA adapters (tests/integration/test_lora.py scrapes them)"
EXEMPT_PANELS = {
    **{("serve-app-adapters", p.title): _NO_ADAPTERS for p in adapters().panels},
    **{("serve-app-router", p.title): "this scenario configures no tenants" for p in _flow_control_row()},
}
# This scenario configures no tenants, so the flow-control series are never recorded
# (tests/integration/test_flow_control.py runs flow control on the real stack).
FLOW_CONTROL_METRICS = {s.name for s in m.METRICS if s.name.startswith(("serve_app_tenant_", "serve_app_flow_queue_"))}
EXEMPT_METRICS = {s.name for s in m.METRICS if s.name.startswith("serve_app_adapter_")} | FLOW_CONTROL_METRICS
# One rate window over the whole test: the app serves traffic for well under this.
RATE_WINDOW_S = 300
SERIES_TIMEOUT_S = 60
BURST = 6


def scenario_config() -> AppConfig:
    """Autoscaling pinned at one replica (so the policy runs and records) and an admission
    budget of two requests (so a burst gets 429s)."""
    args = local_config(max_model_len=512, autoscaling={"min_replicas": 1, "max_replicas": 1}).model_dump()
    args["router"]["max_queued_requests"] = 2
    return load_config(args)


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def label_values(self, label: str, series: str) -> list[str]:
        response = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": series}, timeout=30)
        return response.json()["data"]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    wait_until_ok(f"{url}/-/ready", timeout_s, process=process, period_s=0.3, request_timeout_s=2)


@pytest.fixture(scope="module")
def stack(serve_app_with_metrics: MetricsServe) -> RunningApp:
    app = serve_app_with_metrics.start(scenario_config())
    print(f"\nserve-app ready {app.ready_after_s:.1f} s after deploy")
    return app


MISSING = (
    "Prometheus is not installed, so the dashboards' queries are NOT checked: run `make install-prometheus` "
    "(the Debian package's binary, unpacked into the venv) or put any Prometheus 2.x on PATH"
)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Checked before the stack starts. Never a silent skip: the reason is printed (pytest -rs), and
    under CI (CI=true) a missing binary fails the run."""
    binary = shutil.which("prometheus") or shutil.which("prometheus", path=str(Path(sys.executable).parent))
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return binary


@contextmanager
def run_prometheus(binary: str, scrape_target: str, work: Path) -> Iterator[Prometheus]:
    """A Prometheus on 127.0.0.1 (free port, data under ``work``) scraping ``scrape_target`` every
    second; stopped on exit."""
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"- {{job_name: ray, static_configs: [{{targets: ['{scrape_target}']}}]}}\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    log = work / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process)
        yield Prometheus(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, serve_app_with_metrics: MetricsServe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("prometheus")
    with run_prometheus(prometheus_binary, serve_app_with_metrics.metrics_target, work) as server:
        yield server


def chat(base_url: str, stream: bool = False, model: str = MODEL, max_tokens: int = 16) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as response:
        response.read()  # a streamed answer is read to its end, as a client would
        return response.status_code


def drive_wave(base_url: str) -> list[int]:
    """One chat, one streamed chat, one /generate, an unknown model, then a concurrent burst of
    streamed chats over the admission budget of 2. Returns the burst's status codes."""
    assert chat(base_url) == 200
    assert chat(base_url, stream=True) == 200
    generate = {"prompt": "The capital of France is", "max_new_tokens": 8}
    assert httpx.post(f"{base_url}/generate", json=generate, timeout=120).status_code == 200
    assert chat(base_url, model="no-such-model") == 404
    with ThreadPoolExecutor(BURST) as pool:
        burst = list(pool.map(lambda _: chat(base_url, stream=True, max_tokens=32), range(BURST)))
    assert set(burst) <= {200, 429}, burst
    assert 429 in burst, f"a burst of {BURST} over an admission budget of 2 must get 429s: {burst}"
    return burst


def wait_for_series(prometheus: Prometheus, names: set[str], timeout_s: float = SERIES_TIMEOUT_S) -> None:
    """Ray exports a metric only after its first record, and then within its report period."""
    deadline = time.monotonic() + timeout_s
    missing = names
    while time.monotonic() < deadline:
        present = {r["metric"]["__name__"] for r in prometheus.query('group by (__name__) ({__name__=~"ray_.+"})')}
        missing = names - present
        if not missing:
            return
        time.sleep(1)
    raise AssertionError(f"not in Prometheus after {timeout_s} s: {sorted(missing)}\n{prometheus.log_tail()}")


def panel_queries() -> list[tuple[tuple[str, str], str]]:
    return [((d.uid, p.title), q.expr) for d in all_dashboards() for p in d.panels for q in p.queries]


def finite_values(result: list[dict]) -> list[float]:
    return [v for v in (float(r["value"][1]) for r in result) if math.isfinite(v)]


def queries_without_data(prometheus: Prometheus, queries: list[tuple[tuple[str, str], str]]) -> list[str]:
    return [
        f"{key}: {expr}"
        for key, expr in queries
        if not finite_values(prometheus.query(substitute_variables(expr, RATE_WINDOW_S)))
    ]


def test_every_dashboard_query_returns_data(prometheus: Prometheus, stack: RunningApp, tmp_path: Path) -> None:
    started = time.time()
    drive_wave(stack.base_url)
    # Rates need a sample before the increase: wait until every series exists, then load again.
    expected = {spec.exported_series[0] for spec in m.METRICS if spec.name not in EXEMPT_METRICS}
    wait_for_series(prometheus, expected)
    drive_wave(stack.base_url)

    checked = [(key, expr) for key, expr in panel_queries() if key not in EXEMPT_PANELS]
    exempt = [(key, expr) for key, expr in panel_queries() if key in EXEMPT_PANELS]
    assert {key for key, _ in exempt} == set(EXEMPT_PANELS), "an exempt panel no longer exists"
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while (missing := queries_without_data(prometheus, checked)) and time.monotonic() < deadline:
        time.sleep(2)  # the second wave's increases arrive with the next exports and scrapes
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
    print(f"{len(checked)} dashboard queries return data {time.time() - started:.0f} s after the first request")
    assert len(queries_without_data(prometheus, exempt)) == len(exempt), "an exempt panel has data: drop it"

    # No router batching here (max_batch_size 1): the batch-size panel's mean and median read 1
    # (not 0.5, which edges at 1, 2, 4, ... gave through Ray's bucket midpoints and interpolation).
    batch = {q.legend: q.expr for d in all_dashboards() for p in d.panels for q in p.queries if p.title == "Batch size"}
    for legend in ("mean", "p50"):
        values = finite_values(prometheus.query(substitute_variables(batch[legend], RATE_WINDOW_S)))
        assert values == [pytest.approx(1.0)], (legend, values)

    # The dashboards' variables list the model and the replica deployment.
    assert MODEL in prometheus.label_values("model", m.REQUESTS.exported_name)
    deployment = replica_deployment_name(stack.config.models[0])
    assert deployment in prometheus.label_values("deployment", m.REPLICAS.exported_name)

    # The picture of the main panels renders from the same data.
    picture = render_from_prometheus(prometheus.url, tmp_path / "dashboard.png", started, time.time(), 2.0, 60)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
