"""Many users typing at once against one Jupyter server and a loopback backend.

Each simulated user sends a streamed completion every ~150 ms (jittered) and
abandons the previous request if it is still running, as the frontend does.
The backend answers each request after 100 ms.  Runs are bounded in time.

Reported per number of users: requests served, errors, requests abandoned and
how many of those the backend saw cancelled, the server's overhead (total
time minus the backend's 100 ms) at p50/p99, the server's memory after
warm-up and at the end, and connections still open at the end.

    python benchmarks/load_test.py [--users 10,50,100] [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx
import psutil

from _common import fake_backend, jupyter_server, load_cells, summary


@dataclass
class Tally:
    served: int = 0
    errors: int = 0
    abandoned: int = 0
    overhead_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


def notebook() -> dict:
    cells = [c for c in load_cells()[1] if c["cell_type"] != "raw"][:30]
    index = next(i for i in range(15, 30) if cells[i]["cell_type"] == "code")
    return {"cells": cells, "cell_index": index, "cursor": len(cells[index]["source"]), "stream": True}


async def one_request(client: httpx.AsyncClient, url: str, body: dict, tally: Tally, delay_ms: float) -> None:
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                tally.errors += 1
                tally.error_samples.append(f"{response.status_code} {(await response.aread())[:120]!r}")
                return
            async for line in response.aiter_lines():
                if line and "error" in json.loads(line):
                    tally.errors += 1
                    tally.error_samples.append(line[:120])
                    return
        tally.served += 1
        tally.overhead_ms.append((time.perf_counter() - start) * 1000 - delay_ms)
    except httpx.HTTPError as error:
        tally.errors += 1
        tally.error_samples.append(repr(error)[:120])


async def user(client: httpx.AsyncClient, url: str, body: dict, tally: Tally, until: float, interval: float,
               delay_ms: float, rng: random.Random) -> None:
    current: asyncio.Task[None] | None = None
    while time.monotonic() < until:
        if current is not None and not current.done():
            current.cancel()  # a newer keystroke: abandon the request in flight
            tally.abandoned += 1
        current = asyncio.create_task(one_request(client, url, body, tally, delay_ms))
        await asyncio.sleep(interval * rng.uniform(0.7, 1.3))
    if current is not None:
        await asyncio.gather(current, return_exceptions=True)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def backend_connections(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections() if c.raddr and c.raddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)


async def run(users: int, duration: float, interval: float, delay: float, base: str, headers: dict[str, str],
              backend: str, pid: int, body: dict) -> dict:
    url = f"{base}/complete"
    limits = httpx.Limits(max_connections=users * 3, max_keepalive_connections=users * 2)
    async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as client:
        rng = random.Random(users)
        warm = Tally()
        await asyncio.gather(*(user(client, url, body, warm, time.monotonic() + 3, interval, delay * 1000, rng)
                               for _ in range(users)))
        await asyncio.sleep(1)
        memory_warm = rss_mb(pid)
        before = httpx.get(f"{backend}/_stats").json()
        cpu_before = sum(psutil.Process(pid).cpu_times()[:2])
        tally = Tally()
        until = time.monotonic() + duration
        await asyncio.gather(*(user(client, url, body, tally, until, interval, delay * 1000, rng) for _ in range(users)))
    cpu_used = sum(psutil.Process(pid).cpu_times()[:2]) - cpu_before
    await asyncio.sleep(2)  # let cancellations and pools settle
    after = httpx.get(f"{backend}/_stats").json()
    reached = after["requests"] - before["requests"]
    return {
        "tally": tally,
        "backend_requests": reached,
        "backend_cancelled": after["disconnects"] - before["disconnects"],
        "backend_finished": after["finished"] - before["finished"],
        "backend_in_flight": after["in_flight"],
        "memory_warm": memory_warm,
        "memory_end": rss_mb(pid),
        "connections_end": backend_connections(pid, int(backend.rsplit(":", 1)[1])),
        "server_cpu_ms_per_request": cpu_used * 1000 / max(1, tally.served + tally.abandoned + tally.errors),
        "duration": duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.15)
    parser.add_argument("--backend-delay", type=float, default=0.1)
    args = parser.parse_args()

    body = notebook()
    rows = []
    with fake_backend(delay=args.backend_delay) as backend, jupyter_server(
        "--CodestralExtension.backend=mistral", f"--CodestralExtension.url={backend}",
        env={"CODESTRAL_API_KEY": "load-test-key"},
    ) as (base, headers, proc):
        for users in [int(u) for u in args.users.split(",")]:
            rows.append((users, asyncio.run(run(users, args.duration, args.interval, args.backend_delay, base, headers,
                                                backend, proc.pid, body))))

    print(f"\n{args.duration:.0f} s per run; a request every ~{args.interval * 1000:.0f} ms per user; "
          f"backend answers after {args.backend_delay * 1000:.0f} ms; 30-cell notebook")
    print(f"{'users':>5}{'served':>8}{'errors':>8}{'abandoned':>10}{'at backend':>11}{'cancelled':>10}"
          f"{'overhead p50':>13}{'p99':>8}{'MB warm':>9}{'MB end':>8}{'conns end':>10}{'CPU ms/req':>11}")
    for users, r in rows:
        t: Tally = r["tally"]
        s = summary(t.overhead_ms or [0])
        abandoned_at_backend = r["backend_requests"] - r["backend_finished"]
        print(f"{users:>5}{t.served:>8}{t.errors:>8}{t.abandoned:>10}{abandoned_at_backend:>11}{r['backend_cancelled']:>10}"
              f"{s['median']:>13.1f}{s['p99']:>8.1f}{r['memory_warm']:>9.0f}{r['memory_end']:>8.0f}{r['connections_end']:>10}"
              f"{r['server_cpu_ms_per_request']:>11.2f}")
        for sample in t.error_samples[:3]:
            print(f"      error: {sample}")
    print("'at backend': abandoned requests that had reached the backend; 'cancelled': those the backend saw "
          "disconnected before finishing (goal: equal). Overhead = client-observed time - backend delay (ms). "
          "'conns end': the server's open connections to the backend (idle keep-alive pool) after the run. "
          "'CPU ms/req': the Jupyter server's CPU time per request sent (served, abandoned or failed).")


if __name__ == "__main__":
    main()
