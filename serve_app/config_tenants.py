"""Flow control configuration (``flow_control``): tenants, their quotas and priority classes.

An API key maps to a tenant by the key's SHA-256 digest (hex), so the config file holds no
secret: ``printf %s "$KEY" | sha256sum``. A tenant's keys are valid API keys by themselves (the
router accepts them besides ``server.api_keys_env``/``api_keys_file``). Typed, validated once,
pure: no Ray, no I/O. See docs/flow-control.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PriorityClass = Literal["interactive", "batch"]
# Highest first: the admission queue serves a lower index first and sheds a higher one first.
PRIORITY_ORDER: tuple[PriorityClass, ...] = ("interactive", "batch")
TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Tenant names are metric label values: the config bounds their number.
MAX_TENANTS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantLimits(_Strict):
    """A tenant's quotas; None: unlimited. Windows are ``flow_control.minute_s`` / ``day_s``."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    # Requests of this tenant in flight at once, across all router replicas (each router replica
    # holds its share: ceil(max_concurrent / router.num_replicas)).
    max_concurrent: int | None = Field(None, ge=1)
    priority: PriorityClass = "interactive"


class TenantConfig(TenantLimits):
    name: str = Field(..., pattern=TENANT_NAME_PATTERN)
    # SHA-256 digests (64 hex characters) of this tenant's API keys.
    api_key_sha256: list[str] = Field(..., min_length=1)
    # Keys of an admin tenant may read every tenant's usage (GET /admin/usage).
    admin: bool = False

    @model_validator(mode="after")
    def _digests(self) -> TenantConfig:
        for digest in self.api_key_sha256:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"api_key_sha256 entries must be 64 lowercase hex characters, got {digest[:12]!r}...")
        return self


class ClassQueueConfig(_Strict):
    # A request waiting longer than this in the admission queue is dropped (503) before it
    # reaches an engine.
    max_wait_s: float = Field(..., gt=0)
    # At most this many requests of the class in flight per router replica (None: up to
    # max_in_flight): a cap on batch keeps slots free for interactive arrivals.
    max_in_flight: int | None = Field(None, ge=1)
    # A lower cap that holds only while a higher class has requests waiting or in flight on the
    # router replica (0: start none then; those in flight finish): the class yields the engine to
    # higher-class traffic and uses up to max_in_flight when there is none. None: no such cap.
    max_in_flight_when_higher_active: int | None = Field(None, ge=0)
    # Requests of this class for the model named by a key are served by the models: entry its
    # value names (a pool of the same model for this class, e.g. at cpu_scheduling "idle"), so
    # that the class's work does not share the other classes' engines or CPUs.
    model_pools: dict[str, str] = Field(default_factory=dict)


class FlowControlConfig(_Strict):
    tenants: list[TenantConfig] = Field(default_factory=list, max_length=MAX_TENANTS)
    # Limits of a valid key (server.api_keys_*) that no tenant lists; also the tenant of every
    # request when no keys are configured at all. Its name in usage and metrics is "default".
    default: TenantLimits = Field(default_factory=TenantLimits)
    # The quota windows, aligned to the wall clock (UTC). Tests shorten them; production keeps
    # 60 s and 86400 s.
    minute_s: float = Field(60.0, gt=0)
    day_s: float = Field(86_400.0, gt=0)
    # How often each router replica settles with the cluster's quota ledger (a named Ray actor);
    # it bounds how stale a router replica's view of the others' usage is (docs/flow-control.md).
    sync_interval_s: float = Field(0.2, gt=0, le=10)
    # Requests one router replica sends to replicas at once; more wait in its admission queue.
    max_in_flight: int = Field(64, ge=1)
    # Requests that may wait in one router replica's admission queue; past it the lowest class is shed.
    max_waiting: int = Field(256, ge=0)
    interactive: ClassQueueConfig = Field(default_factory=lambda: ClassQueueConfig(max_wait_s=5.0))
    batch: ClassQueueConfig = Field(default_factory=lambda: ClassQueueConfig(max_wait_s=60.0))
    # Retry-After (seconds) of a 503 for capacity (queue full, shed, deadline passed).
    retry_after_s: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> FlowControlConfig:
        names = [t.name for t in self.tenants]
        dupes = sorted({n for n in names if names.count(n) > 1} | ({"default"} & set(names)))
        if dupes:
            raise ValueError(f'tenant name(s) {dupes} used twice ("default" is reserved)')
        digests = [d for t in self.tenants for d in t.api_key_sha256]
        if len(digests) != len(set(digests)):
            raise ValueError("an api_key_sha256 digest is listed under more than one tenant")
        return self

    def class_queue(self, priority: str) -> ClassQueueConfig:
        return self.interactive if priority == "interactive" else self.batch

    def model_pools(self) -> dict[str, dict[str, str]]:
        """Each class's ``model_pools``, by class name."""
        return {name: dict(self.class_queue(name).model_pools) for name in PRIORITY_ORDER}
