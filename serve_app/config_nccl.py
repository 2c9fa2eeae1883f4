"""NCCL (and torch.distributed) settings of one application, as typed config.

:meth:`NcclConfig.env_vars` turns them into the ``runtime_env`` environment variables of every
replica actor; vLLM's Ray executor copies the driver's environment to its GPU workers, so one
setting reaches every rank. ``None`` means "leave NCCL's own default": nothing is emitted, so the
defaults of the NCCL build on the node (and its auto-detection) stay in force. docs/multi-gpu.md
says when to set each one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Variables that extra_env may carry: NCCL's own, PyTorch's NCCL process group, libfabric (AWS EFA
# through the aws-ofi-nccl plugin) and gloo (vLLM's CPU-side process group).
EXTRA_ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_", "FI_", "GLOO_")

# A network interface list in NCCL's syntax: names or prefixes separated by commas, optionally led
# by "^" (exclude) or "=" (exact match), e.g. "ens", "^lo,docker", "=eth0".
_IFNAME_LIST = r"^[\^=]?[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*$"
_HCA_LIST = r"^[\^=]?[A-Za-z0-9_.-]+(:\d+)?(,[A-Za-z0-9_.-]+(:\d+)?)*$"


def _flag(value: bool) -> str:
    return "1" if value else "0"


class NcclConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    socket_ifname: str | None = Field(None, pattern=_IFNAME_LIST)  # NCCL_SOCKET_IFNAME
    gloo_socket_ifname: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$")  # GLOO_SOCKET_IFNAME
    ib_hca: str | None = Field(None, pattern=_HCA_LIST)  # NCCL_IB_HCA
    ib_disable: bool | None = None  # NCCL_IB_DISABLE
    ib_gid_index: int | None = Field(None, ge=0, le=255)  # NCCL_IB_GID_INDEX (RoCE)
    ib_timeout: int | None = Field(None, ge=1, le=31)  # NCCL_IB_TIMEOUT (4.096 us x 2^value)
    ib_retry_cnt: int | None = Field(None, ge=0, le=7)  # NCCL_IB_RETRY_CNT
    p2p_level: Literal["LOC", "NVL", "PIX", "PXB", "PHB", "SYS"] | None = None  # NCCL_P2P_LEVEL
    p2p_disable: bool | None = None  # NCCL_P2P_DISABLE
    nvls_enable: bool | None = None  # NCCL_NVLS_ENABLE
    debug: Literal["VERSION", "WARN", "INFO", "TRACE"] | None = None  # NCCL_DEBUG
    debug_subsys: str | None = Field(None, pattern=r"^\^?[A-Z]+(,[A-Z]+)*$")  # NCCL_DEBUG_SUBSYS
    blocking_wait: bool | None = None  # TORCH_NCCL_BLOCKING_WAIT
    async_error_handling: Literal[0, 1, 2, 3] | None = None  # TORCH_NCCL_ASYNC_ERROR_HANDLING
    heartbeat_timeout_s: int | None = Field(None, ge=1)  # TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC
    extra_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra_env")
    @classmethod
    def _known_prefixes(cls, env: dict[str, str]) -> dict[str, str]:
        foreign = sorted(k for k in env if not k.startswith(EXTRA_ENV_PREFIXES))
        if foreign:
            raise ValueError(f"extra_env may only set {', '.join(EXTRA_ENV_PREFIXES)}* variables; got {foreign}")
        return env

    @model_validator(mode="after")
    def _consistent(self) -> NcclConfig:
        if self.ib_disable and (self.ib_hca or self.ib_gid_index is not None):
            raise ValueError("ib_disable turns InfiniBand off, so ib_hca / ib_gid_index would be ignored")
        if self.p2p_disable and self.p2p_level is not None:
            raise ValueError("p2p_disable turns peer-to-peer off, so p2p_level would be ignored")
        if self.debug_subsys and self.debug not in ("INFO", "TRACE"):
            raise ValueError("debug_subsys only filters INFO/TRACE output; set debug: INFO")
        typed = set(self._typed_env())
        repeated = sorted(typed & self.extra_env.keys())
        if repeated:
            raise ValueError(f"extra_env repeats typed setting(s) {repeated}; use the typed field")
        return self

    def _typed_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        pairs: list[tuple[str, str | None]] = [
            ("NCCL_SOCKET_IFNAME", self.socket_ifname),
            ("GLOO_SOCKET_IFNAME", self.gloo_socket_ifname),
            ("NCCL_IB_HCA", self.ib_hca),
            ("NCCL_IB_DISABLE", None if self.ib_disable is None else _flag(self.ib_disable)),
            ("NCCL_IB_GID_INDEX", None if self.ib_gid_index is None else str(self.ib_gid_index)),
            ("NCCL_IB_TIMEOUT", None if self.ib_timeout is None else str(self.ib_timeout)),
            ("NCCL_IB_RETRY_CNT", None if self.ib_retry_cnt is None else str(self.ib_retry_cnt)),
            ("NCCL_P2P_LEVEL", self.p2p_level),
            ("NCCL_P2P_DISABLE", None if self.p2p_disable is None else _flag(self.p2p_disable)),
            ("NCCL_NVLS_ENABLE", None if self.nvls_enable is None else _flag(self.nvls_enable)),
            ("NCCL_DEBUG", self.debug),
            ("NCCL_DEBUG_SUBSYS", self.debug_subsys),
            ("TORCH_NCCL_BLOCKING_WAIT", None if self.blocking_wait is None else _flag(self.blocking_wait)),
            (
                "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                None if self.async_error_handling is None else str(self.async_error_handling),
            ),
            (
                "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
                None if self.heartbeat_timeout_s is None else str(self.heartbeat_timeout_s),
            ),
        ]
        for name, value in pairs:
            if value is not None:
                env[name] = value
        return env

    def env_vars(self) -> dict[str, str]:
        """The ``runtime_env["env_vars"]`` entries for these settings (unset fields emit nothing)."""
        return self._typed_env() | dict(self.extra_env)
