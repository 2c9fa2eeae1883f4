"""``serve-app dashboards provision`` against a local server speaking the Grafana HTTP API calls
grafana-client makes (health, folders, POST /api/dashboards/db), with Grafana's status codes."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from serve_app.cli import main as cli_main
from serve_app.observability.dashboards import all_dashboards
from serve_app.observability.grafana import GrafanaProvisionError, connect, folder_uid, provision
from serve_app.observability.grafana_json import dashboard_json

TOKEN = "glsa_test_token"
BASIC = ("admin", "s3cret:with-colon")


@dataclass
class GrafanaState:
    accepted_auth: set[str]
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)


class FakeGrafana(BaseHTTPRequestHandler):
    state: GrafanaState

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        self.state.calls.append((self.command, self.path))
        if self.headers.get("Authorization") in self.state.accepted_auth:
            return True
        self._reply(401, {"message": "Unauthorized"})
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path == "/api/health":
            return self._reply(200, {"database": "ok", "version": "11.3.0", "commit": "test"})
        if self.path == "/api/folders":
            return self._reply(200, list(self.state.folders.values()))
        uid = self.path.removeprefix("/api/folders/")
        if uid in self.state.folders:
            return self._reply(200, self.state.folders[uid])
        return self._reply(404, {"message": "folder not found", "status": "not-found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/folders":
            return self._create_folder(body)
        if self.path == "/api/dashboards/db":
            return self._save_dashboard(body)
        return self._reply(404, {"message": "not found"})

    def _create_folder(self, body: dict[str, Any]) -> None:
        if body.get("uid") in self.state.folders or body["title"] in {f["title"] for f in self.state.folders.values()}:
            return self._reply(409, {"message": "a folder with the same name already exists"})
        uid = body.get("uid") or f"auto{len(self.state.folders)}"
        folder = {"id": len(self.state.folders) + 1, "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}"}
        self.state.folders[uid] = folder
        return self._reply(200, folder)

    def _save_dashboard(self, body: dict[str, Any]) -> None:
        dashboard, folder = body["dashboard"], body.get("folderUid")
        if folder not in self.state.folders:
            return self._reply(400, {"message": "folder not found"})
        previous = self.state.dashboards.get(dashboard["uid"])
        if previous is not None and not body.get("overwrite"):
            return self._reply(
                412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
            )
        version = previous["version"] + 1 if previous else 1
        self.state.dashboards[dashboard["uid"]] = {**body, "version": version}
        uid = dashboard["uid"]
        return self._reply(200, {"id": 7, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": version})

    def log_message(self, format: str, *args: Any) -> None:
        return None


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaState]]:
    state = GrafanaState(accepted_auth={f"Bearer {TOKEN}", basic_header(*BASIC)})
    handler = type("Handler", (FakeGrafana,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_provision_uploads_every_generated_dashboard_into_the_folder(grafana: tuple[str, GrafanaState]) -> None:
    url, state = grafana
    uploaded = provision(url, "Serve App", api_key=TOKEN)
    expected = {d.uid: dashboard_json(d) for d in all_dashboards()}
    assert [u.uid for u in uploaded] == list(expected)
    assert {u.version for u in uploaded} == {1}
    assert list(state.folders) == ["serve-app"] and state.folders["serve-app"]["title"] == "Serve App"
    for uid, stored in state.dashboards.items():
        assert stored["dashboard"] == {**expected[uid], "id": None}
        assert stored["folderUid"] == "serve-app" and stored["overwrite"] is True


def test_provision_again_updates_in_place(grafana: tuple[str, GrafanaState]) -> None:
    url, state = grafana
    provision(url, "Serve App", api_key=TOKEN)
    again = provision(url, "Serve App", api_key=TOKEN)
    assert {u.version for u in again} == {2}
    assert state.calls.count(("POST", "/api/folders")) == 1
    assert len(state.dashboards) == len(all_dashboards())


def test_provision_with_basic_auth_into_a_folder_made_by_hand(grafana: tuple[str, GrafanaState]) -> None:
    url, state = grafana
    state.folders["hand-made"] = {"id": 1, "uid": "hand-made", "title": "LLM Team", "url": "/dashboards/f/hand-made"}
    provision(url, "LLM Team", basic_auth=":".join(BASIC))
    assert list(state.folders) == ["hand-made"]
    assert {d["folderUid"] for d in state.dashboards.values()} == {"hand-made"}


def test_cli_provision(grafana: tuple[str, GrafanaState], capsys: pytest.CaptureFixture[str]) -> None:
    url, state = grafana
    assert cli_main(["dashboards", "provision", "--grafana-url", url, "--api-key", TOKEN, "--folder", "Prod"]) == 0
    out = capsys.readouterr().out
    assert all(d.uid in out for d in all_dashboards())
    assert {d["folderUid"] for d in state.dashboards.values()} == {"prod"}


def test_cli_provision_reads_the_token_from_the_environment(
    grafana: tuple[str, GrafanaState], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = grafana
    monkeypatch.setenv("GRAFANA_API_KEY", TOKEN)
    assert cli_main(["dashboards", "provision", "--grafana-url", url]) == 0
    assert len(state.dashboards) == len(all_dashboards())


def test_wrong_token_is_reported_and_nothing_uploaded(
    grafana: tuple[str, GrafanaState], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = grafana
    with pytest.raises(GrafanaProvisionError, match="401"):
        provision(url, "Serve App", api_key="wrong")
    assert cli_main(["dashboards", "provision", "--grafana-url", url, "--api-key", "wrong"]) == 1
    assert "401" in capsys.readouterr().err
    assert state.dashboards == {}


def test_unreachable_grafana_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli_main(["dashboards", "provision", "--grafana-url", f"http://127.0.0.1:{port}", "--api-key", "t"]) == 1
    assert "cannot reach Grafana" in capsys.readouterr().err


def test_credentials_and_folder_uids() -> None:
    with pytest.raises(ValueError, match="not both"):
        connect("http://localhost:3000", api_key="t", basic_auth="a:b")
    with pytest.raises(ValueError, match="user:password"):
        connect("http://localhost:3000", basic_auth="no-colon")
    assert folder_uid("Serve App / Prod") == "serve-app-prod"
    with pytest.raises(ValueError):
        folder_uid("///")
