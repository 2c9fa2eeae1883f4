"""The only module that imports vLLM: an Engine backed by ``vllm.v1.engine.async_llm.AsyncLLM``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serve_app.config import ModelConfig
from serve_app.engine.gpu_start_lock import gpu_start_lock, shared_gpu_ids
from serve_app.engine.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineDeadError,
    EngineRequestError,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    RequestError,
)
from serve_app.replica.preflight import WORKER_EXTENSION, ensure_engine_workers_ready

# Our dtype names -> vLLM's.
_DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
# Our quantize-on-load names -> vLLM's quantization method names.
_QUANTIZATION_ALIASES = {"int8-weight-only": "int8_per_channel_weight_only"}


def engine_args_dict(config: ModelConfig, model_path: Path) -> dict[str, Any]:
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
        args["quantization"] = _QUANTIZATION_ALIASES.get(config.quantization, config.quantization)
    if config.task == "embed":
        args["runner"] = "pooling"
    if config.gpus_per_replica > 1:
        # Workers go into the replica's Ray placement group (serve_app.core.placement).
        args["distributed_executor_backend"] = "ray"
        args["worker_extension_cls"] = WORKER_EXTENSION
    args.update(config.engine_options)
    return args


def build_vllm_config(config: ModelConfig, model_path: Path) -> Any:
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
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"model {config.id!r}: engine_options {unknown} are not vLLM AsyncEngineArgs fields")
    return AsyncEngineArgs(**args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)


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


class VllmEngine:
    def __init__(self, config: ModelConfig, model_path: Path) -> None:
        self.config = config
        self.model_path = model_path
        self._llm: Any = None
        self._tokenizer: Any = None
        self._max_model_len = config.max_model_len or 0
        self._stats = _StatsHolder()

    async def start(self) -> None:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

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
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = self._llm.model_config.max_model_len
        if self.config.gpus_per_replica > 1:
            # Pre-flight: an all-reduce across every worker before the replica takes traffic;
            # raises with the failing rank and the likely cause (NCCL settings, a dead worker).
            await ensure_engine_workers_ready(
                self._llm.collective_rpc, self.config.gpus_per_replica, self.config.placement.preflight_timeout_s
            )

    def _shared_gpus(self) -> list[str]:
        import ray

        assigned = ray.get_gpu_ids() if ray.is_initialized() else []
        return shared_gpu_ids(self.config.ray_actor_options.num_gpus, self.config.gpus_per_replica, assigned)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            try:
                ids = self._tokenizer.apply_chat_template(
                    list(request.messages), add_generation_prompt=True, tokenize=True
                )
            except Exception as err:  # a template that rejects the messages is the client's error
                raise EngineRequestError(
                    RequestError(400, f"messages cannot be rendered: {err}", param="messages")
                ) from None
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self._tokenizer.encode(request.prompt or ""))

    def _sampling_params(self, request: GenerationRequest, prompt_len: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        if prompt_len + s.max_tokens > self._max_model_len:
            param = "messages" if request.messages is not None else "prompt"
            raise EngineRequestError(
                RequestError(
                    400,
                    f"This model's maximum context length is {self._max_model_len} tokens. However, you requested "
                    f"{prompt_len + s.max_tokens} tokens ({prompt_len} in the prompt, {s.max_tokens} for the "
                    "completion). Please reduce the prompt or max_tokens.",
                    param=param,
                    code="context_length_exceeded",
                )
            )
        return SamplingParams(
            n=1,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=list(s.stop) or None,
            seed=s.seed,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty,
            top_k=s.top_k if s.top_k > 0 else 0,
            min_tokens=s.min_tokens,
            ignore_eos=s.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead

        if self._llm is None or self._llm.errored:
            raise EngineDeadError("engine is not running")
        ids = self._prompt_ids(request)
        if not ids:
            raise EngineRequestError(RequestError(400, "the prompt is empty", param="prompt"))
        params = self._sampling_params(request, len(ids))
        completion_tokens = 0
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=ids), params, request.request_id):
                seq = out.outputs[0]
                completion_tokens += len(seq.token_ids)
                yield GenerationChunk(
                    text=seq.text,
                    prompt_tokens=len(ids),
                    completion_tokens=completion_tokens,
                    finish_reason=seq.finish_reason if out.finished else None,
                )
        except VllmDead as err:
            raise EngineDeadError(str(err)) from err

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        from vllm import PoolingParams

        token_ids = [list(self._tokenizer.encode(text)) for text in request.inputs]
        for i, ids in enumerate(token_ids):
            if len(ids) > self._max_model_len:
                message = f"input {i} has {len(ids)} tokens; the limit is {self._max_model_len}"
                return EmbeddingResult(error=RequestError(400, message, param="input"))

        async def one(i: int, ids: list[int]) -> list[float]:
            final = None
            prompt = {"prompt_token_ids": ids}
            async for out in self._llm.encode(prompt, PoolingParams(task="embed"), f"{request.request_id}-{i}"):
                final = out
            assert final is not None
            return [float(x) for x in final.outputs.data.tolist()]

        # All inputs enter the engine at once, so that it batches them.
        vectors = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(token_ids)))
        return EmbeddingResult(vectors=list(vectors), prompt_tokens=sum(len(ids) for ids in token_ids))

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineDeadError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as err:
            raise EngineDeadError(f"engine unhealthy: {err}") from err

    def stats(self) -> EngineStats:
        return self._stats.stats

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
