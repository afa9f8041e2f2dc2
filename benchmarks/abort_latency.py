"""How fast a newer request for the same notebook stops the one in flight.

The completion service is driven directly (no HTTP) with the embedded model:
a long generation is started, then, at a random moment (while the prompt is
read, or while it generates), a new request for the same document arrives.
Measured: the time from the new request to the old one's end in the worker
(its "cancelled" error).

    python benchmarks/abort_latency.py [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from _common import summary

from jupyter_codestral.app import CodestralExtension
from jupyter_codestral.backends.embedded import EmbeddedBackend
from jupyter_codestral.assembly import backend_settings, context_budget
from jupyter_codestral.errors import CompletionError
from jupyter_codestral.ratelimit import UserRateLimiter
from jupyter_codestral.request import Cell, CompletionRequest, RequestLimits
from jupyter_codestral.service import CompletionService, ServiceLimits


def request(source: str, max_tokens: int) -> CompletionRequest:
    return CompletionRequest((Cell("code", source),), 0, len(source), path="same.ipynb", max_tokens=max_tokens)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    app = CodestralExtension(backend="local")
    settings, budget = backend_settings(app), context_budget(app)
    backend = EmbeddedBackend(settings)
    service = CompletionService(backend, budget, ServiceLimits(1 << 24, RequestLimits(), 128), UserRateLimiter(0, 1))
    async with asyncio.timeout(300):
        await backend.wait_ready()
    rng = random.Random(1)
    stops, phases = [], []
    try:
        for trial in range(args.trials):
            # A different long prompt each time, so part of the trials abort while it is read.
            filler = "\n".join(f"value_{trial}_{i} = compute({i}, {trial})" for i in range(rng.randint(10, 120)))
            old = request(f"{filler}\n# a long list of numbers\nnumbers = [", 400)
            old_ended = asyncio.get_running_loop().create_future()

            async def run_old() -> None:
                try:
                    async for _ in service.serve(old, "user"):
                        pass
                    old_ended.set_result("finished")
                except CompletionError as error:
                    old_ended.set_result(error.kind)

            seen = backend.timings_seen
            task = asyncio.create_task(run_old())
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            started = time.perf_counter()

            async def run_new() -> None:
                async for _ in service.serve(request("x = 1\ny = x +", 8), "user"):
                    pass

            newer = asyncio.create_task(run_new())
            # The worker reports the old request's end (its figures) before it starts the newer one.
            while backend.timings_seen == seen:
                await asyncio.sleep(0.001)
            stopped_at = time.perf_counter()
            phases.append("generating" if backend.last_timings.get("generated_tokens") else "reading")
            await asyncio.gather(task, newer)
            if await old_ended == "cancelled":
                stops.append((stopped_at - started) * 1000)
            else:
                phases.pop()
            while backend.timings_seen < seen + 2:
                await asyncio.sleep(0.01)
    finally:
        await service.aclose()
    s = summary(stops)
    print(f"{len(stops)} of {args.trials} in-flight generations stopped by a newer request "
          f"(at random moments: {phases.count('reading')} while reading the prompt, "
          f"{phases.count('generating')} while generating)")
    print(f"time from the newer request to the old one's end: median {s['median']:.1f} ms, p95 {s['p95']:.1f} ms, "
          f"max {max(stops):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
