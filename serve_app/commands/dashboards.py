"""serve-app dashboards: generate the Grafana/Prometheus files and docs/metrics.md, upload dashboards, render a PNG."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards, Prometheus config and metric docs")
    actions = p.add_subparsers(dest="dashboards_command", required=True)

    gen = actions.add_parser("generate", help="write dashboards/*.json, provisioning YAML and prometheus.yml")
    gen.add_argument("--out", type=Path, default=Path("dashboards"), help="output folder (default: dashboards)")
    gen.add_argument("--check", action="store_true", help="exit 1 if the files differ instead of writing them")
    gen.set_defaults(func=run_generate)

    docs = actions.add_parser("docs", help="write docs/metrics.md from the metric specs")
    docs.add_argument("--out", type=Path, default=Path("docs/metrics.md"))
    docs.add_argument("--check", action="store_true", help="exit 1 if the file differs instead of writing it")
    docs.set_defaults(func=run_docs)

    prov = actions.add_parser("provision", help="upload the dashboards to Grafana through its HTTP API")
    prov.add_argument("--grafana-url", required=True, help="e.g. http://localhost:3000")
    auth = prov.add_mutually_exclusive_group()
    auth.add_argument(
        "--api-key",
        default=None,
        help="service account token (default: $GRAFANA_API_KEY, which keeps the token out of `ps`)",
    )
    auth.add_argument("--basic-auth", metavar="USER:PASSWORD", default=None)
    prov.add_argument("--folder", default="Serve App", help="Grafana folder title (default: Serve App)")
    prov.set_defaults(func=run_provision)

    render = actions.add_parser("render", help="PNG of the main panels from a Prometheus server")
    render.add_argument("--prometheus-url", required=True, help="e.g. http://localhost:9090")
    render.add_argument("--out", type=Path, default=Path("metrics.png"))
    render.add_argument("--minutes", type=float, default=30.0, help="time range ending now (default: 30)")
    render.add_argument("--step", type=float, default=15.0, help="query resolution in seconds (default: 15)")
    render.add_argument("--rate-window", type=int, default=60, help="rate() window in seconds (default: 60)")
    render.set_defaults(func=run_render)


def run_generate(args: argparse.Namespace) -> int:
    from serve_app.observability.provisioning import stale_generated, write_generated

    if args.check:
        stale = stale_generated(args.out)
        if stale:
            print(
                f"out of date in {args.out}: {', '.join(stale)}; run `serve-app dashboards generate`", file=sys.stderr
            )
            return 1
        print(f"{args.out} is up to date")
        return 0
    for path in write_generated(args.out):
        print(path)
    return 0


def run_docs(args: argparse.Namespace) -> int:
    from serve_app.observability.docs import write_or_check

    return write_or_check(args.out, args.check)


def run_provision(args: argparse.Namespace) -> int:
    from serve_app.observability.grafana import GrafanaProvisionError, provision

    api_key = args.api_key or (None if args.basic_auth else os.environ.get("GRAFANA_API_KEY"))
    try:
        uploaded = provision(args.grafana_url, args.folder, api_key=api_key, basic_auth=args.basic_auth)
    except (GrafanaProvisionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for dashboard in uploaded:
        print(f"{dashboard.uid}\tversion {dashboard.version}\t{dashboard.url}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    import httpx

    from serve_app.observability.render import render_from_prometheus

    end = time.time()
    try:
        path = render_from_prometheus(
            args.prometheus_url, args.out, end - args.minutes * 60, end, args.step, args.rate_window
        )
    except (ValueError, OSError, httpx.HTTPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
