"""Upload the generated dashboards to a running Grafana through its HTTP API (grafana-client).

For Grafana without API access, mount ``dashboards/`` and use file provisioning instead
(``dashboards/provisioning/``). Requires Grafana 9+ (dashboards are placed by ``folderUid``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ServeAppError
from serve_app.observability.dashboards import all_dashboards
from serve_app.observability.grafana_json import dashboard_json

UPLOAD_MESSAGE = "serve-app dashboards provision"
# Statuses Grafana answers a folder create with when the folder (uid or title) already exists.
_FOLDER_EXISTS = (409, 412)


class GrafanaProvisionError(ServeAppError, RuntimeError):
    """Grafana refused or could not be reached; the message says which call failed."""


@dataclass(frozen=True)
class UploadedDashboard:
    uid: str
    title: str
    url: str
    version: int


def folder_uid(title: str) -> str:
    """A stable folder uid from its title, so re-provisioning updates the same folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if not slug:
        raise ValueError(f"folder title {title!r} has no letters or digits")
    return slug[:40]


def connect(url: str, api_key: str | None = None, basic_auth: str | None = None, timeout_s: float = 10.0) -> Any:
    """A ``grafana_client.GrafanaApi``; ``basic_auth`` is ``user:password``. Credentials may also be in the URL."""
    # Imported here: only this command needs the client library.
    from grafana_client import GrafanaApi

    if api_key and basic_auth:
        raise ValueError("give either an API key (service account token) or basic auth, not both")
    credential: str | tuple[str, str] | None = api_key or None
    if basic_auth:
        user, sep, password = basic_auth.partition(":")
        if not sep or not user:
            raise ValueError("basic auth must look like user:password")
        credential = (user, password)
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout_s)


def _status(err: Exception) -> int | None:
    return getattr(err, "status_code", None)


def ensure_folder(api: Any, title: str) -> str:
    """The uid of the folder named ``title``, created when missing."""
    from grafana_client.client import GrafanaClientError

    uid = folder_uid(title)
    try:
        return str(api.folder.get_folder(uid)["uid"])
    except GrafanaClientError as err:
        if _status(err) != 404:
            raise
    try:
        return str(api.folder.create_folder(title, uid=uid)["uid"])
    except GrafanaClientError as err:
        if _status(err) not in _FOLDER_EXISTS:
            raise
    # A folder with this title but another uid exists (made by hand): use it rather than fail.
    for folder in api.folder.get_all_folders():
        if folder.get("title") == title:
            return str(folder["uid"])
    raise GrafanaProvisionError(f"Grafana refused to create folder {title!r} and none by that title exists")


def upload_dashboards(api: Any, dashboards: Sequence[dict[str, Any]], folder_title: str) -> list[UploadedDashboard]:
    """Create or overwrite each dashboard (matched by uid) inside the folder."""
    from grafana_client.client import GrafanaException

    try:
        api.health.check()
        folder = ensure_folder(api, folder_title)
        uploaded = []
        for dashboard in dashboards:
            payload = {
                "dashboard": {**dashboard, "id": None},
                "folderUid": folder,
                "overwrite": True,
                "message": UPLOAD_MESSAGE,
            }
            answer = api.dashboard.update_dashboard(payload)
            uploaded.append(
                UploadedDashboard(
                    str(answer["uid"]), str(dashboard["title"]), str(answer.get("url", "")), int(answer["version"])
                )
            )
        return uploaded
    except GrafanaException as err:
        raise GrafanaProvisionError(f"Grafana answered {_status(err)}: {err}") from err
    except OSError as err:  # connection refused, DNS, timeouts (requests' errors are OSErrors)
        raise GrafanaProvisionError(f"cannot reach Grafana: {err}") from err


def provision(
    url: str, folder_title: str, api_key: str | None = None, basic_auth: str | None = None
) -> list[UploadedDashboard]:
    api = connect(url, api_key=api_key, basic_auth=basic_auth)
    return upload_dashboards(api, [dashboard_json(d) for d in all_dashboards()], folder_title)
