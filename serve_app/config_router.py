"""The ``router:`` section of a serve config, split by the consumer of each part.

Users write one flat section; each consumer receives only its part:

* :class:`ReplicaChoiceConfig`: which replica of a model deployment gets a request. Read by Ray
  Serve's request router (``serve_app.router.replica_choice.PolicyRequestRouter``) inside every
  handle the router deployment holds; it is the only part serialized into the replica
  deployments' ``request_router_kwargs``.
* :class:`AdmissionConfig`: the router deployment's admission budgets and request timeout
  (``serve_app.core.admission``).
* :class:`RouterDeploymentConfig`: the router deployment's size and placement (``serve_app.app``).

:class:`RouterConfig` is all three in one flat model, so a key keeps its path (``router.policy``)
in the file and in validation errors. Typed, validated once, pure: no Ray, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.config_parts import part_of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplicaChoiceConfig(_Strict):
    """The routing policy over a model's replicas (``serve_app.core.policies``)."""

    policy: Literal["pow2", "prefix", "round_robin"] = "pow2"
    prefix_chars: int = Field(256, ge=1)
    prefix_load_factor: float = Field(1.5, ge=1.0)
    # A request naming a LoRA adapter prefers replicas holding it (serve_app.core.policies
    # AdapterAffinityPolicy), whatever ``policy`` is; off, adapter requests route by ``policy``.
    adapter_affinity: bool = True
    adapter_load_factor: float = Field(1.5, ge=1.0)


class AdmissionConfig(_Strict):
    """Budgets of requests admitted and not yet answered, per router replica."""

    max_queued_requests: int = Field(1024, ge=1)
    max_queued_tokens: int = Field(2_000_000, ge=1)
    overflow_status: Literal[429, 503] = 429
    retry_after_s: int = Field(1, ge=1)
    request_timeout_s: float = Field(600.0, gt=0)


class RouterDeploymentConfig(_Strict):
    """The router deployment's replicas and what each asks of Ray."""

    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(4096, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    # Ray custom resources the router replicas ask for: pins them to the nodes that offer them
    # (as ``models[].ray_actor_options.resources`` pins a model's replicas).
    resources: dict[str, float] = Field(default_factory=dict)


# Bases listed last-first: pydantic collects fields from the last base on, so the fields keep the
# order above (replica choice, admission, deployment).
class RouterConfig(RouterDeploymentConfig, AdmissionConfig, ReplicaChoiceConfig):
    """The ``router:`` section: every part's fields, flat."""

    def replica_choice(self) -> ReplicaChoiceConfig:
        return part_of(self, ReplicaChoiceConfig)

    def admission(self) -> AdmissionConfig:
        return part_of(self, AdmissionConfig)

    def deployment(self) -> RouterDeploymentConfig:
        return part_of(self, RouterDeploymentConfig)
