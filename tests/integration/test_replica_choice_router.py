"""PolicyRequestRouter, the Ray Serve ``RequestRouter`` over serve_app.core.replica_choice,
exercised without a Ray cluster (RequestRouter only needs an event loop). In this tier because it
imports Ray; the policies themselves are unit-tested in tests/unit/test_policies.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.core.policies import preferred_replica
from serve_app.replica.contract import CancelRequests, RelayRequest

REPLICAS = [f"replica-{i}" for i in range(8)]


@dataclass
class FakeReplica:
    """What PolicyRequestRouter reads from Ray's RunningReplica."""

    replica_id: Any
    routing_stats: dict[str, Any] = field(default_factory=dict)
    max_ongoing_requests: int = 64


def _generation(request_id: str, prompt: str, max_tokens: int = 100) -> RelayRequest:
    """A request as the router sends it: its prompt for affinity, its expected tokens as cost."""
    cost = len(prompt) // 4 + max_tokens
    return RelayRequest(request_id, "/v1/completions", b"{}", routing_text=prompt, cost_hint=cost)


def _pending(args: list[Any], internal_id: str) -> Any:
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    return PendingRequest(args=args, kwargs={}, metadata=RequestMetadata(internal_id, internal_id))


def _router(**router_kwargs: Any) -> tuple[Any, list[FakeReplica], Callable[[str], Any]]:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID
    from ray.serve.request_router import ReplicaID

    from serve_app.router.replica_choice import PolicyRequestRouter

    deployment = DeploymentID(name="llm-test", app_name="app")
    router = PolicyRequestRouter(deployment_id=deployment, handle_source=DeploymentHandleSource.UNKNOWN)
    router.initialize_state(**router_kwargs)
    replicas = [FakeReplica(ReplicaID(rid, deployment)) for rid in REPLICAS[:4]]
    return router, replicas, lambda rid: ReplicaID(rid, deployment)


async def test_ray_router_keeps_prefix_affinity_then_spills_on_load() -> None:
    router, replicas, replica_id = _router(policy="prefix", prefix_chars=12)
    prompt = "System: be brief. "
    home = preferred_replica(prompt[:12], REPLICAS[:4])
    request = _pending([_generation("a", prompt + "hi")], "req-a")
    ranks = await router.choose_replicas(replicas, request)
    assert [r.replica_id.unique_id for r in ranks[0]] == [home]
    assert sorted(r.replica_id.unique_id for r in ranks[1]) == sorted(set(REPLICAS[:4]) - {home})
    assert request.routing_context.should_backoff
    # Many long requests routed to home (as Ray reports them) push it past the bound.
    for i in range(5):
        router.on_request_routed(_pending([_generation(f"x{i}", prompt, 2000)], f"x{i}"), replica_id(home), None)
    spilled = await router.choose_replicas(replicas, _pending([_generation("b", prompt + "yo")], "req-b"))
    assert spilled[0][0].replica_id.unique_id != home
    for i in range(5):
        router.on_request_completed(replica_id(home), f"x{i}")
        router.on_request_completed(replica_id(home), f"x{i}")  # a second report is harmless
    back = await router.choose_replicas(replicas, _pending([_generation("c", prompt + "ok")], "req-c"))
    assert back[0][0].replica_id.unique_id == home


async def test_ray_router_reads_replica_routing_stats_and_batches() -> None:
    router, replicas, _ = _router(policy="pow2")
    replicas = replicas[:2]
    replicas[1].routing_stats = {"outstanding_tokens": 50_000, "outstanding_requests": 40}
    batch = [_generation("a", "x" * 400, 10), _generation("b", "y" * 40, 20)]
    for i in range(10):
        ranks = await router.choose_replicas(replicas, _pending([batch], f"batch-{i}"))
        assert ranks[0][0] is replicas[0]
    from serve_app.core.replica_choice import routing_key_and_cost

    assert routing_key_and_cost([batch]) == ("x" * 400, (100 + 10) + (10 + 20))
    assert routing_key_and_cost([batch[1:]]) == ("y" * 40, 10 + 20)
    assert routing_key_and_cost(["probe prompt"]) == ("", 1)
    assert routing_key_and_cost([]) == ("", 1)


async def test_ray_router_counts_rays_queue_length_as_load() -> None:
    router, replicas, replica_id = _router(policy="pow2")
    replicas = replicas[:2]
    router.replica_queue_len_cache.update(replica_id(REPLICAS[1]), 30)
    for i in range(10):
        ranks = await router.choose_replicas(replicas, _pending([_generation(f"q{i}", "hello")], f"q{i}"))
        assert ranks[0][0] is replicas[0]


def test_ray_router_rejects_unknown_config_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _router(polcy="pow2")


async def test_ray_router_sends_a_cancellation_to_the_replica_running_the_batch() -> None:
    router, replicas, _ = _router(policy="pow2")
    target = replicas[2].replica_id.unique_id
    for i in range(8):  # the policy alone would spread these over the replicas
        ranks = await router.choose_replicas(replicas, _pending([CancelRequests(target, ("a",))], f"cancel-{i}"))
        assert ranks == [[replicas[2]]]
    gone = await router.choose_replicas(replicas, _pending([CancelRequests("replica-gone", ("a",))], "cancel-x"))
    assert gone == [replicas], "a batch whose replica is gone has nothing left to cancel: any replica answers"
