"""How fast a newer request for the same notebook stops the one in flight.

The embedded model's worker is driven directly (no HTTP): a long generation
is started, then, at a random moment (while the prompt is read, or while it
generates), a new request for the same document arrives.  Measured: the time
from the new request to the old one's end (its "cancelled" error).

    python benchmarks/abort_latency.py [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from _common import summary
from jupyter_codestral.backends.base import FimRequest
from jupyter_codestral.backends.local import LocalBackend
from jupyter_codestral.config import resolve
from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.errors import BackendError
from jupyter_codestral.request import Cell, CompletionRequest


def fim(source: str, max_tokens: int) -> FimRequest:
    request = CompletionRequest((Cell("code", source),), 0, len(source), path="same.ipynb")
    return FimRequest(build_context(request, ContextBudget()), max_tokens=max_tokens, document_id="same.ipynb")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    settings, _ = resolve({"backend": "local"}, {})
    backend = LocalBackend(settings)
    await backend.wait_ready(300)
    rng = random.Random(1)
    stops, phases = [], []
    try:
        for trial in range(args.trials):
            # A different long prompt each time, so part of the trials abort while it is read.
            filler = "\n".join(f"value_{trial}_{i} = compute({i}, {trial})" for i in range(rng.randint(10, 120)))
            old = fim(f"{filler}\n# a long list of numbers\nnumbers = [", 400)
            ended = asyncio.get_running_loop().create_future()

            async def run_old() -> None:
                try:
                    async for _ in backend.stream(old):
                        pass
                    ended.set_result(("finished", time.perf_counter()))
                except BackendError as error:
                    # The worker's figures for the stopped request: had it produced a token yet?
                    phases.append("generating" if backend.last_timings.get("generated_tokens") else "reading")
                    ended.set_result((error.kind, time.perf_counter()))

            task = asyncio.create_task(run_old())
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            started = time.perf_counter()

            async def run_new() -> None:
                async for _ in backend.stream(fim("x = 1\ny = x +", 8)):
                    pass

            newer = asyncio.create_task(run_new())
            outcome, at = await ended
            await asyncio.gather(task, newer)
            if outcome == "cancelled":
                stops.append((at - started) * 1000)
            while backend.timings_seen < (trial + 1) * 2:
                await asyncio.sleep(0.01)
    finally:
        await backend.aclose()
    s = summary(stops)
    print(f"{len(stops)} of {args.trials} in-flight generations stopped by a newer request "
          f"(at random moments: {phases.count('reading')} while reading the prompt, "
          f"{phases.count('generating')} while generating)")
    print(f"time from the newer request to the old one's end: median {s['median']:.1f} ms, p95 {s['p95']:.1f} ms, "
          f"max {max(stops):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
