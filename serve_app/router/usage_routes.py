"""``GET /admin/usage`` and ``/admin/usage/{tenant}``: each tenant's usage in the current quota
windows, cluster-wide (the quota bank's view: at most one sync interval old), for admin keys only
(``flow_control.tenants[].admin``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from serve_app.router.errors import OpenAIError
from serve_app.router.flow_gate import FlowGate

_LIMIT_FIELDS = {"requests": "requests_per_minute", "tokens": "tokens_per_minute", "tokens_day": "tokens_per_day"}


def install_usage_routes(app: FastAPI, gate: FlowGate) -> None:
    @app.get("/admin/usage")
    async def all_usage(request: Request) -> dict[str, Any]:
        _require_admin(gate, request)
        return await _usage(gate, list(gate.tenants.limits))

    @app.get("/admin/usage/{tenant}")
    async def tenant_usage(tenant: str, request: Request) -> dict[str, Any]:
        _require_admin(gate, request)
        if tenant not in gate.tenants.limits:
            raise OpenAIError(404, f"no tenant named {tenant!r}", param="tenant", code="tenant_not_found")
        return await _usage(gate, [tenant])


def _require_admin(gate: FlowGate, request: Request) -> None:
    caller = gate.tenants.caller(getattr(request.state, "client", None), None)
    if not caller.admin:
        raise OpenAIError(403, "this key may not read usage (an admin tenant's key is needed)", type="permission_error")


async def _usage(gate: FlowGate, tenants: list[str]) -> dict[str, Any]:
    used = await gate.quota.usage()
    flow = gate.flow
    out: dict[str, Any] = {}
    for name in tenants:
        limits = gate.tenants.limits[name]
        out[name] = {
            "keys": gate.tenants.key_ids(name),
            "priority": limits.priority,
            **{
                field: {"used": round(used.get(name, {}).get(dim, 0.0)), "limit": getattr(limits, field)}
                for dim, field in _LIMIT_FIELDS.items()
            },
        }
    windows = {"minute_s": flow.minute_s, "day_s": flow.day_s, "staleness_s": flow.sync_interval_s}
    return {"object": "usage", "windows": windows, "tenants": out}
