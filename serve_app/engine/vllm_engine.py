"""The only module that imports vLLM (with vllm_compat): an Engine backed by vLLM's ``AsyncLLM``,
answering HTTP with vLLM's own OpenAI server built over that engine.

It reads the engine part of a model's config (``serve_app.config_engine.EngineConfig``) and nothing
else: the two deployment facts a replica's engine needs (the actor's GPUs, the pre-flight timeout)
come as arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from serve_app.config_engine import EngineConfig
from serve_app.engine.gpu_start_lock import gpu_start_lock, shared_gpu_ids
from serve_app.engine.preflight import WORKER_EXTENSION, ensure_engine_workers_ready
from serve_app.engine.types import EngineDeadError, EngineStats
from serve_app.engine.vllm_compat import parse_server_args, server_entry_points
from serve_app.quantize.onload import vllm_quantization_name

# Our dtype names -> vLLM's.
_DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def engine_args_dict(config: EngineConfig, model_path: Path) -> dict[str, Any]:
    """The AsyncEngineArgs keyword arguments for a model: typed fields first, then passthrough."""
    args: dict[str, Any] = {
        "model": str(model_path),
        "served_model_name": [config.id],
        "dtype": _DTYPES[config.dtype],
        "max_model_len": config.max_model_len,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed,
        "kv_cache_dtype": config.kv_cache_dtype,
        "disable_log_stats": False,
    }
    if config.quantization:
        args["quantization"] = vllm_quantization_name(config.quantization)
    if config.task == "embed":
        args["runner"] = "pooling"
    if config.lora is not None:
        args |= {
            "enable_lora": True,
            "max_loras": config.lora.max_loras,
            "max_lora_rank": config.lora.max_lora_rank,
            "max_cpu_loras": config.lora.cached_adapters,
        }
    if config.gpus_per_replica > 1:
        # Workers go into the replica's Ray placement group (serve_app.core.placement).
        args["distributed_executor_backend"] = "ray"
        args["worker_extension_cls"] = WORKER_EXTENSION
    args.update(config.engine_options)
    return args


def engine_env_vars(config: EngineConfig) -> dict[str, str]:
    """What vLLM reads from the replica's environment rather than its arguments: adapters loaded
    at run time need its ``/v1/load_lora_adapter`` route, which it serves only with this set."""
    if config.lora is not None and config.lora.dynamic:
        return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    return {}


def build_vllm_config(config: EngineConfig, model_path: Path) -> Any:
    """The engine's VllmConfig, with the defaults ``vllm serve`` would pick on this machine.

    vLLM sizes ``max_num_batched_tokens`` and ``max_num_seqs`` by usage context and GPU (an H100 or
    H200 serving OpenAI requests: 8192 and 1024), and a config made without one gets the generic
    2048 and 128; ``max_num_seqs`` also caps the CUDA-graph capture sizes (2 x max_num_seqs, at most
    512). The stack serves OpenAI requests, so it asks for that context: otherwise a 512-token
    prefill that ``vllm serve`` runs as a CUDA graph ran without one here. Explicit
    ``engine_options`` still win.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    args = engine_args_dict(config, model_path)
    unknown = _unknown_engine_args(args)
    if unknown:
        raise ValueError(f"model {config.id!r}: engine_options {unknown} are not vLLM AsyncEngineArgs fields")
    return AsyncEngineArgs(**args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)


def _unknown_engine_args(args: dict[str, Any]) -> list[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return sorted(set(args) - {f.name for f in dataclasses.fields(AsyncEngineArgs)})


def engine_option_problems(config: EngineConfig) -> list[str]:
    """What the installed vLLM would refuse in a model's engine and server options, each prefixed by
    its key; found without a model folder and without starting anything (``serve-app check``)."""
    placeholder = Path(config.source)
    problems = []
    unknown = _unknown_engine_args(engine_args_dict(config, placeholder))
    if unknown:
        problems.append(f"engine_options: {unknown} are not vLLM AsyncEngineArgs fields")
    try:
        parse_server_args(server_entry_points(), server_argv(config, placeholder))
    except ValueError as err:
        problems.append(f"openai_server: {err}")
    return problems


class _StatsHolder:
    """Latest scheduler stats, written by vLLM's stat-logger hook and read by autoscaling."""

    def __init__(self) -> None:
        self.stats = EngineStats()
        self._queries = 0
        self._hits = 0

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        holder = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
            ) -> None:
                if scheduler_stats is not None:
                    holder.update(scheduler_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)

    def update(self, s: Any) -> None:
        prefix = getattr(s, "prefix_cache_stats", None)
        if prefix is not None:
            self._queries += getattr(prefix, "queries", 0)
            self._hits += getattr(prefix, "hits", 0)
        self.stats = EngineStats(
            running=s.num_running_reqs,
            waiting=s.num_waiting_reqs,
            kv_cache_usage=float(s.kv_cache_usage),
            prefix_cache_hit_rate=self._hits / self._queries if self._queries else 0.0,
        )


def server_argv(config: EngineConfig, model_path: Path) -> list[str]:
    """``vllm serve``'s frontend flags for a model: what its OpenAI server answers and how.

    The engine is built from ``engine_args_dict``; these flags shape only the server over it
    (names clients may send, chat template, tool and reasoning parsers, and any other server
    option passed through ``openai_server.options``, checked by vLLM's own parser)."""
    server = config.openai_server
    argv = ["--model", str(model_path), "--served-model-name", config.id, *server.served_model_aliases]
    if server.chat_template:
        argv += ["--chat-template", server.chat_template]
    if server.tool_call_parser:
        argv += ["--tool-call-parser", server.tool_call_parser]
    if server.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if server.reasoning_parser:
        argv += ["--reasoning-parser", server.reasoning_parser]
    if config.lora is not None and config.lora.adapters:
        # Static adapters, loaded at start; the replica resolved their paths to local folders.
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in config.lora.adapters)]
    for name, value in server.options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


class VllmEngine:
    def __init__(self, config: EngineConfig, model_path: Path, actor_gpus: float, preflight_timeout_s: float) -> None:
        self.config = config
        self.model_path = model_path
        self.actor_gpus = actor_gpus  # ray_actor_options.num_gpus: GPUs other replicas may share
        self.preflight_timeout_s = preflight_timeout_s
        self._llm: Any = None
        self.app: Any = None
        self._stats = _StatsHolder()

    async def start(self) -> None:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # The server's flags first: a bad option fails before minutes of engine start.
        entry = server_entry_points()
        args = parse_server_args(entry, server_argv(self.config, self.model_path))
        vllm_config = build_vllm_config(self.config, self.model_path)
        if self.config.gpus_per_replica > 1:
            # The engine core runs in a subprocess: hand it the replica's placement group, or it
            # would create a second one and wait forever for GPUs the first one holds.
            import ray

            vllm_config.parallel_config.placement_group = ray.util.get_current_placement_group()
        # Replicas sharing a GPU start their engines one at a time (gpu_start_lock says why).
        async with gpu_start_lock(self._shared_gpus(), owner=f"model {self.config.id!r}"):
            self._llm = AsyncLLM.from_vllm_config(
                vllm_config, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=[self._stats.factory]
            )
        if self.config.gpus_per_replica > 1:
            # Pre-flight: an all-reduce across every worker before the replica takes traffic;
            # raises with the failing rank and the likely cause (NCCL settings, a dead worker).
            await ensure_engine_workers_ready(
                self._llm.collective_rpc, self.config.gpus_per_replica, self.preflight_timeout_s
            )
        tasks = await self._llm.get_supported_tasks()
        app = entry.build_app(args, tasks, self._llm.model_config)
        await entry.init_app_state(self._llm, app.state, args, tasks)
        self.app = app

    def _shared_gpus(self) -> list[str]:
        import ray

        assigned = ray.get_gpu_ids() if ray.is_initialized() else []
        return shared_gpu_ids(self.actor_gpus, self.config.gpus_per_replica, assigned)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineDeadError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as err:
            raise EngineDeadError(f"engine unhealthy: {err}") from err

    def stats(self) -> EngineStats:
        return self._stats.stats

    async def loaded_adapters(self) -> list[str]:
        """Adapters in the engine's LoRA cache (vLLM's LRU, at most max_cpu_loras), by the names
        its OpenAI server gave them."""
        if self._llm is None or self.config.lora is None or self.app is None:
            return []
        ids = await self._llm.list_loras()
        by_id = {r.lora_int_id: name for name, r in self.app.state.openai_serving_models.lora_requests.items()}
        return sorted(by_id[i] for i in ids if i in by_id)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
