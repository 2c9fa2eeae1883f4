"""The seed's naive server: FastAPI + transformers ``generate``, one request at a time behind a global lock.

    python benchmarks/baselines/naive_server.py [--model PATH] [--port 8001]

Every request waits for the lock, then decodes alone; concurrent clients queue, so latency grows
linearly with the number of clients and throughput stays that of batch size 1.
"""

from __future__ import annotations

import asyncio

import uvicorn
from hf_serving import HFModel, Job, Output, arg_parser, build_app, load_model


class NaiveGenerator:
    def __init__(self, model: HFModel) -> None:
        self.model = model
        self.lock = asyncio.Lock()

    async def __call__(self, job: Job) -> Output:
        async with self.lock:
            # A worker thread keeps the event loop answering /health while the one request decodes.
            (out,) = await asyncio.to_thread(self.model.generate, [job])
        return out


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    app = build_app(NaiveGenerator(load_model(args)), args.model_id)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
