"""The seed's dynamic-batching server: requests join an asyncio queue; a batcher takes up to
``--max-batch-size`` of them, waiting at most ``--batch-timeout-ms`` after the first, and runs them
through one padded transformers ``generate`` call.

    python benchmarks/baselines/batched_server.py [--model PATH] [--port 8002] [--max-batch-size 32]

This is static batching per call: a batch runs until its longest member is done and newcomers wait
for the next batch (unlike vLLM's continuous batching).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from hf_serving import HFModel, Job, Output, arg_parser, build_app, load_model


class Batcher:
    def __init__(self, model: HFModel, max_batch_size: int, batch_timeout_s: float) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.queue: asyncio.Queue[tuple[Job, asyncio.Future[Output]]] = asyncio.Queue()

    async def __call__(self, job: Job) -> Output:
        future: asyncio.Future[Output] = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def _next_batch(self) -> list[tuple[Job, asyncio.Future[Output]]]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.batch_timeout_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self.queue.get())
            except TimeoutError:
                break
        return batch

    async def run(self) -> None:
        """Forever: form a batch, decode it in a worker thread, hand each caller its row."""
        while True:
            batch = await self._next_batch()
            live = [(job, fut) for job, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                outputs = await asyncio.to_thread(self.model.generate, [job for job, _ in live])
            except Exception as err:  # a failed batch fails its callers, not the server
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), out in zip(live, outputs, strict=True):
                if not fut.done():
                    fut.set_result(out)


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=20.0)
    parser.set_defaults(port=8002)
    args = parser.parse_args()
    batcher = Batcher(load_model(args), args.max_batch_size, args.batch_timeout_ms / 1000.0)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    uvicorn.run(build_app(batcher, args.model_id, lifespan), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
