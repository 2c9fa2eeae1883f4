"""What both seed baselines share: a transformers model that generates for a list of prompts, and a
FastAPI app exposing ``POST /generate {prompt, max_new_tokens} -> {text}`` and a minimal, non-streaming
``POST /v1/completions`` so that ``serve-app bench`` (and ``vllm bench serve``-style clients) can drive them.

The servers differ only in how requests reach :meth:`HFModel.generate`: one at a time under a lock
(naive_server.py) or gathered into batches (batched_server.py).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    model: str | None = None


class CompletionBody(BaseModel):
    # OpenAI clients send many optional fields; the baselines honour these and ignore the rest.
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(..., min_length=1)
    max_tokens: int = Field(16, ge=1, le=4096)
    model: str | None = None
    stream: bool = False
    ignore_eos: bool = False


@dataclass(frozen=True)
class Job:
    prompt: str
    max_new_tokens: int
    ignore_eos: bool = False


@dataclass(frozen=True)
class Output:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class HFModel:
    """Greedy decoding through ``transformers.generate`` with left padding (the seed's recipe)."""

    def __init__(self, path: Path, dtype: str = "float32", threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        self.weights_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def generate(self, jobs: Sequence[Job]) -> list[Output]:
        """One ``generate`` call for the whole batch; rows are cut to their own limits afterwards."""
        batch = self.tokenizer([j.prompt for j in jobs], return_tensors="pt", padding=True)
        longest = max(j.max_new_tokens for j in jobs)
        # A batch decodes to its longest member; EOS can be ignored only for the whole batch.
        min_new = longest if all(j.ignore_eos for j in jobs) else 0
        with self._torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=longest, min_new_tokens=min_new, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        prompt_len = batch["input_ids"].shape[1]
        real_prompt_lens = batch["attention_mask"].sum(dim=1).tolist()
        return [self._output(out[i, prompt_len:].tolist(), job, real_prompt_lens[i]) for i, job in enumerate(jobs)]

    def _output(self, new_ids: list[int], job: Job, prompt_tokens: int) -> Output:
        new_ids = new_ids[: job.max_new_tokens]
        finish = "length"
        eos = self.tokenizer.eos_token_id
        if not job.ignore_eos and eos in new_ids:
            new_ids, finish = new_ids[: new_ids.index(eos)], "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return Output(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(new_ids), finish_reason=finish)


Generate = Callable[[Job], Awaitable[Output]]


def build_app(
    generate: Generate, model_id: str, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None
) -> FastAPI:
    app = FastAPI(title=f"baseline: {model_id}", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "baseline"}]}

    @app.post("/generate")
    async def generate_route(body: GenerateBody) -> dict[str, Any]:
        out = await generate(Job(body.prompt, body.max_new_tokens))
        return {"text": out.text, "model": model_id, "prompt_tokens": out.prompt_tokens} | {
            "completion_tokens": out.completion_tokens, "finish_reason": out.finish_reason
        }  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> dict[str, Any]:
        if body.stream:
            raise HTTPException(400, "this baseline does not stream; send stream=false")
        out = await generate(Job(body.prompt, body.max_tokens, body.ignore_eos))
        choice = {"index": 0, "text": out.text, "finish_reason": out.finish_reason, "logprobs": None}
        usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}
        usage["total_tokens"] = out.prompt_tokens + out.completion_tokens
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())} | {
            "model": model_id, "choices": [choice], "usage": usage
        }  # fmt: skip

    return app


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--model-id", default="smollm2-135m-instruct", help="name reported and accepted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return parser


def load_model(args: argparse.Namespace) -> HFModel:
    path = args.model
    if path is None:
        from serve_app.models.embedded import prepare_smollm2

        path = prepare_smollm2()
    model = HFModel(path, args.dtype, args.threads)
    print(f"loaded {path}: {model.weights_bytes / 2**20:.1f} MiB of weights ({args.dtype})", flush=True)
    return model
