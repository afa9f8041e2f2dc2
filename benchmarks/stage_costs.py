"""CPU time of the stages of one completion, in-process, on the load test's 30-cell request.

What ``benchmarks/load_test.py`` measures as a whole, taken apart without Tornado or a
browser: parsing and validating the body, building the context, the postprocessing
options and the route, and one streamed request to the loopback Mistral-protocol
backend through the same aiohttp session settings the server uses (CPU of this
process only; the backend runs in its own).  Each figure is the best of five repeats,
in microseconds per request.

    python benchmarks/stage_costs.py [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import timeit
from typing import Any

import aiohttp
from _common import fake_backend
from load_test import notebook

from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.postprocess import options_for
from jupyter_codestral.request import parse_completion_request
from jupyter_codestral.routes import route_kind

# The Mistral backend's defaults (backends.KINDS).
BUDGET = ContextBudget(prefix_tokens=4096, suffix_tokens=1024, trim_step_tokens=256)


def best_us(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


async def relay_us(url: str, payload: dict[str, Any], requests: int) -> float:
    """CPU per streamed request through aiohttp, read to its end (the connection kept alive)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
    connector = aiohttp.TCPConnector(limit=10, keepalive_timeout=60)
    async with aiohttp.ClientSession(base_url=url + "/", timeout=timeout, connector=connector, trust_env=False) as s:

        async def one() -> None:
            async with s.post("v1/fim/completions", json=payload) as response:
                async for _ in response.content.iter_any():
                    pass

        for _ in range(50):  # warm: the connection, aiohttp's caches
            await one()
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(requests):
                await one()
            best = min(best, (time.process_time() - started) / requests * 1e6)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    body = json.dumps(notebook() | {"path": "student-1/exercises.ipynb", "stream": True}).encode()
    request = parse_completion_request(body)
    context = build_context(request, BUDGET)
    n = 3000
    parse = best_us(lambda: parse_completion_request(body), n)
    # Parsed anew each time: the cells are new objects, as in a real request (no cache hit by identity).
    parse_and_context = best_us(lambda: build_context(parse_completion_request(body), BUDGET), n)
    options = best_us(lambda: (options_for(context), route_kind(context, False)), n)
    payload = {"model": "codestral-latest", "prompt": context.prefix, "suffix": context.suffix, "max_tokens": 64,
               "temperature": 0.2, "stream": True}
    with fake_backend(delay=0.0) as url:
        relay = asyncio.run(relay_us(url, payload, args.requests))
    print(f"30-cell request ({len(body)} bytes), Mistral budget; CPU in microseconds per request, best of 5")
    print(f"parse and validate the body      {parse:8.1f}")
    print(f"build the context                {parse_and_context - parse:8.1f}")
    print(f"postprocessing options, route    {options:8.1f}")
    print(f"streamed request through aiohttp {relay:8.1f}  (prompt {len(context.prefix)} + suffix "
          f"{len(context.suffix)} characters)")


if __name__ == "__main__":
    main()
