"""Many users typing at once against one Jupyter server and a loopback backend.

Each simulated user sends a streamed completion every ~150 ms (jittered) and
abandons the previous request if it is still running, as the frontend does:
the abandoned request's connection is closed, like a browser's aborted
fetch.  The backend answers each request after 100 ms.  Runs are bounded in
time.

The load generator is kept lean (h11 over asyncio streams, keep-alive
connections per user like a browser, one login cookie per user) so that on a
small machine it takes as little CPU as possible from the server it measures.
The same users run first against the backend directly: that baseline is what
the generator and the backend cost by themselves, in the same run.  Then
against Jupyter's own status endpoint (no backend call): the floor any
Jupyter server extension endpoint stands on, on the same machine.

Reported per number of users: requests served, errors, requests abandoned and
how many of those the backend saw cancelled, the overhead (time minus the
backend's 100 ms) at p50/p95/p99, the server's memory after warm-up and at
the end, its connections to the backend at the end, the server's CPU per
request.  With ``--rounds N`` the floor and the completion runs alternate N
times, and the server's CPU per completion is also given as a multiple of the
floor's in the same round (a busy machine drifts by a third between runs;
alternating keeps each ratio's two halves close in time), with the median.
With ``--before REV`` a second server runs that revision's code against the
same backend, its runs alternating with this one's, round by round.  With
``--parts`` the completion requests also run answered without a backend call
(as a prefetch, which this backend does not need): what the request, its
parsing and a reply cost, apart from relaying the backend's stream.

With ``--together`` each round's targets run at the same time, each on a
Jupyter server of its own (the same code): the floor and the completion then
share every second of the machine's drift, and the ratio of their CPU holds
still from round to round (alternating runs drift by a tenth or more).
With ``--relay`` two reference endpoints join (``benchmarks/relay_floor.py``,
loaded only here): our request parsed and answered with a streamed reply
after the backend's delay, and the same with one bare aiohttp request to a
backend: what any relay of this request costs before the completion's own
work.  With ``--fresh`` every round starts new servers: a server process keeps
whatever makes it a few percent faster or slower (its layout in memory, most
likely) for its whole life, so the rounds of one set of servers agree with
each other more closely than two runs do; new processes per round sample that
too.

    python benchmarks/load_test.py [--users 10,50,100] [--duration 15] [--rounds 1] [--before REV] [--parts]
                                   [--together] [--relay] [--fresh]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import h11
import httpx
import psutil
from _common import fake_backend, jupyter_server, load_cells, source_tree, summary

from jupyter_codestral.stats import median


@dataclass
class Target:
    """Where the simulated users send their requests."""

    name: str
    url: str
    headers: list[tuple[str, str]]
    body_for: object  # (user number) -> bytes
    method: str = "POST"
    delay_ms: float | None = None  # what the target waits by design (default: the backend's delay)
    server_pid: int | None = None  # the Jupyter server behind it, whose CPU is measured
    backend: str | None = None  # the backend it calls, whose counts it reports (default: the shared one)
    calls_backend: bool = True

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class Tally:
    served: int = 0
    errors: int = 0
    abandoned: int = 0
    overhead_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def fail(self, sample: str) -> None:
        self.errors += 1
        self.error_samples.append(sample[:160])


class Connection:
    """One keep-alive HTTP/1.1 connection of a simulated browser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
        p = self.protocol
        self.writer.write(
            p.send(h11.Request(method=method, target=target, headers=[*headers, ("Content-Length", str(len(body)))]))
            + p.send(h11.Data(data=body)) + p.send(h11.EndOfMessage())
        )
        status, chunks = 0, []
        while True:
            event = p.next_event()
            if event is h11.NEED_DATA:
                p.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the end of the reply")

    def reusable(self) -> bool:
        if self.protocol.our_state is h11.DONE and self.protocol.their_state is h11.DONE:
            self.protocol.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


def notebook() -> dict:
    cells = [c for c in load_cells()[1] if c["cell_type"] != "raw"][:30]
    index = next(i for i in range(15, 30) if cells[i]["cell_type"] == "code")
    return {"cells": cells, "cell_index": index, "cursor": len(cells[index]["source"]), "stream": True}


async def one_request(target: Target, path: str, body: bytes, pool: list[Connection], tally: Tally,
                      delay_ms: float) -> None:
    start = time.perf_counter()
    conn: Connection | None = None
    try:
        conn = pool.pop() if pool else await Connection.open(*target.address)
        status, reply = await conn.send(target.method, path, target.headers, body)
    except asyncio.CancelledError:
        if conn is not None:
            conn.close()  # a newer keystroke: the browser aborts this fetch
        raise
    except (OSError, h11.ProtocolError) as error:
        if conn is not None:
            conn.close()
        tally.fail(repr(error))
        return
    if conn.reusable():
        pool.append(conn)
    else:
        conn.close()
    if status != 200:
        tally.fail(f"{status} {reply[:120]!r}")
        return
    if b'"error"' in reply:
        tally.fail(next(line for line in reply.decode().splitlines() if '"error"' in line))
        return
    tally.served += 1
    tally.overhead_ms.append((time.perf_counter() - start) * 1000 - delay_ms)


async def user(target: Target, number: int, tally: Tally, until: float, interval: float, delay_ms: float,
               rng: random.Random) -> None:
    path = urlsplit(target.url).path
    body = target.body_for(number)  # type: ignore[operator]
    pool: list[Connection] = []
    current: asyncio.Task[None] | None = None
    while time.monotonic() < until:
        if current is not None and not current.done():
            current.cancel()
            tally.abandoned += 1
        current = asyncio.create_task(one_request(target, path, body, pool, tally, delay_ms))
        await asyncio.sleep(interval * rng.uniform(0.7, 1.3))
    if current is not None:
        await asyncio.gather(current, return_exceptions=True)
    for conn in pool:
        conn.close()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def backend_connections(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections() if c.raddr and c.raddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)


def cpu_seconds(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])


async def run(target: Target, users: int, duration: float, interval: float, delay: float, backend: str,
              server_pid: int | None) -> dict:
    rng = random.Random(users)
    backend = target.backend or backend
    delay_ms = delay * 1000 if target.delay_ms is None else target.delay_ms
    # Warm-up: connections, the server's pools, first-request costs.
    await asyncio.gather(*(user(target, n, Tally(), time.monotonic() + 3, interval, delay_ms, rng) for n in range(users)))
    await asyncio.sleep(1)
    memory_warm = rss_mb(server_pid) if server_pid else 0.0
    before = httpx.get(f"{backend}/_stats").json()
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    own_cpu_before = cpu_seconds(psutil.Process().pid)
    tally = Tally()
    until = time.monotonic() + duration
    await asyncio.gather(*(user(target, n, tally, until, interval, delay_ms, rng) for n in range(users)))
    sent = max(1, tally.served + tally.abandoned + tally.errors)
    server_cpu = (cpu_seconds(server_pid) - cpu_before) if server_pid else 0.0
    own_cpu = cpu_seconds(psutil.Process().pid) - own_cpu_before
    await asyncio.sleep(2)  # let cancellations and pools settle
    after = httpx.get(f"{backend}/_stats").json()
    return {
        "tally": tally,
        "backend_requests": after["requests"] - before["requests"],
        "backend_cancelled": after["disconnects"] - before["disconnects"],
        "backend_finished": after["finished"] - before["finished"],
        "backend_in_flight": after["in_flight"],
        "memory_warm": memory_warm,
        "memory_end": rss_mb(server_pid) if server_pid else 0.0,
        "connections_end": backend_connections(server_pid, int(backend.rsplit(":", 1)[1])) if server_pid else 0,
        "server_cpu_ms_per_request": server_cpu * 1000 / sent,
        "client_cpu_ms_per_request": own_cpu * 1000 / sent,
    }


async def together(targets: list[Target], users: int, args: argparse.Namespace, backend: str) -> list[dict]:
    """The targets' runs at the same time (each on its own server): their CPU is measured over the same seconds."""
    return list(await asyncio.gather(*(run(t, users, args.duration, args.interval, args.backend_delay, backend,
                                            t.server_pid) for t in targets)))


def login_cookie(base: str, token_headers: dict[str, str]) -> str:
    """One user's login cookie, as a browser holds it after logging in."""
    response = httpx.get(f"{base}/status", headers=token_headers)
    response.raise_for_status()
    return "; ".join(f"{k}={v}" for k, v in response.cookies.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.15)
    parser.add_argument("--backend-delay", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=1, help="floor and completion runs, alternated")
    parser.add_argument("--before", help="a git revision to measure too, alternating with this code")
    parser.add_argument("--parts", action="store_true",
                        help="also codestral/complete answered without a backend call (a prefetch, which this backend "
                             "does not need): what the request, its parsing and a reply cost without the relay")
    parser.add_argument("--together", action="store_true",
                        help="run each round's targets at the same time, each on a Jupyter server of its own, so that "
                             "the machine's drift falls on the floor and the completion alike")
    parser.add_argument("--fresh", action="store_true",
                        help="new Jupyter servers for every round: a server process is a few percent faster or slower "
                             "for its whole life, so one set of servers is one sample")
    parser.add_argument("--relay", action="store_true",
                        help="also the reference endpoints of benchmarks/relay_floor.py: a streamed reply to our "
                             "request, and the same with one bare aiohttp request to the backend")
    args = parser.parse_args()

    nb = notebook()
    fim_body = json.dumps({"model": "codestral-latest", "prompt": "x = 1\n" * 200, "suffix": "", "stream": True,
                           "max_tokens": 64}).encode()
    rows = []
    revisions = [None, args.before] if args.before else [None]
    with fake_backend(delay=args.backend_delay) as backend, ExitStack() as servers:
        direct = Target("backend directly (baseline)", f"{backend}/v1/fim/completions",
                        [("Host", urlsplit(backend).netloc), ("Authorization", "Bearer load-test-key"),
                         ("Content-Type", "application/json")], lambda n: fim_body)

        trees: dict[str | None, dict[str, str]] = {}

        def start(stack: ExitStack, revision: str | None, *extra: str,
                  env: dict[str, str] | None = None) -> tuple[str, list, object]:
            if revision not in trees:
                trees[revision] = servers.enter_context(source_tree(revision)) | {"CODESTRAL_API_KEY": "load-test-key"}
            tree = trees[revision]
            base, token_headers, proc = stack.enter_context(jupyter_server(
                "--CodestralExtension.backend=mistral", f"--CodestralExtension.url={backend}", *extra,
                env=tree | (env or {})))
            cookie = login_cookie(base, token_headers)
            return base, [("Host", urlsplit(base).netloc), *token_headers.items(), ("Cookie", cookie)], proc

        def completion_body(n: int) -> bytes:
            # Each user edits a notebook of their own (newest wins per user and document).
            return json.dumps(nb | {"path": f"student-{n}/exercises.ipynb"}).encode()

        def start_servers(stack: ExitStack) -> list[tuple[Target, list[Target]]]:
            """The servers and their targets: (floor, what is measured against it) for each revision."""
            groups: list[tuple[Target, list[Target]]] = []
            for revision in revisions:
                groups.append(revision_targets(stack, revision))
            return groups

        def revision_targets(stack: ExitStack, revision: str | None) -> tuple[Target, list[Target]]:
            label = f", {revision}" if revision else ""
            base, headers, proc = start(stack, revision)
            json_headers = [*headers, ("Content-Type", "application/json")]
            server = Target(f"through codestral/complete{label}", f"{base}/complete", json_headers, completion_body,
                            server_pid=proc.pid)
            parsed = Target(f"codestral/complete, no backend call{label}", f"{base}/complete", json_headers,
                            lambda n: json.dumps(nb | {"path": f"student-{n}/exercises.ipynb", "prefetch": True,
                                                       "stream": False}).encode(), delay_ms=0.0, server_pid=proc.pid,
                            calls_backend=False)
            if args.together:  # every target on a server of its own: its CPU is its own
                base, headers, proc = start(stack, revision)
            # Jupyter's own floor: its cheapest authenticated endpoint, same users, same pace.
            floor = Target(f"jupyter GET api/status (floor{label})", base.replace("/codestral", "/api/status"),
                           headers, lambda n: b"", "GET", 0.0, proc.pid, calls_backend=False)
            if args.parts and args.together:
                base, headers, proc = start(stack, revision)
                json_headers = [*headers, ("Content-Type", "application/json")]
                parsed = replace(parsed, url=f"{base}/complete", headers=json_headers, server_pid=proc.pid)
            others = [parsed, server] if args.parts else [server]
            if args.relay and revision is None:
                # The reference endpoints, each on a server of its own; the relay with a backend of its own.
                bench = {"PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                         "RELAY_FLOOR_DELAY": str(args.backend_delay)}
                relay_backend = stack.enter_context(fake_backend(delay=args.backend_delay))
                for kind, what in (("reply", "streamed reply"), ("relay", "+ bare aiohttp request")):
                    base, headers, proc = start(stack, None, "--ServerApp.jpserver_extensions={'relay_floor': True}",
                                                env=bench | {"RELAY_FLOOR_BACKEND": relay_backend})
                    others.insert(-1, Target(f"reference: {what}", f"{base.removesuffix('/codestral')}/relay-floor/"
                                             f"{kind}", [*headers, ("Content-Type", "application/json")],
                                             completion_body, server_pid=proc.pid, calls_backend=kind == "relay",
                                             backend=relay_backend if kind == "relay" else None))
            return floor, others

        fresh = servers.enter_context(ExitStack())  # the servers of the round being measured, with --fresh
        groups = [] if args.fresh else start_servers(servers)
        for users in [int(u) for u in args.users.split(",")]:
            rows.append((direct, users, asyncio.run(run(direct, users, args.duration, args.interval,
                                                        args.backend_delay, backend, None))))
            for _ in range(args.rounds):
                if args.fresh:  # new processes for each round; the last round's are stopped first
                    fresh.close()
                    groups = start_servers(fresh)
                for floor, others in groups:
                    if args.together:
                        results = asyncio.run(together([floor, *others], users, args, backend))
                        rows.extend((target, users, result) for target, result in zip([floor, *others], results,
                                                                                       strict=True))
                    else:
                        for target in (floor, *others):
                            rows.append((target, users, asyncio.run(run(target, users, args.duration, args.interval,
                                                                        args.backend_delay, backend,
                                                                        target.server_pid))))

    print(f"\n{args.duration:.0f} s per run; a request every ~{args.interval * 1000:.0f} ms per user; "
          f"backend answers after {args.backend_delay * 1000:.0f} ms; 30-cell notebook")
    print(f"{'target':<46}{'users':>5}{'served':>8}{'errors':>7}{'abandoned':>10}{'at backend':>11}{'cancelled':>10}"
          f"{'p50':>7}{'p95':>7}{'p99':>7}{'MB warm':>8}{'MB end':>7}{'conns end':>10}{'in flight':>10}"
          f"{'server CPU':>11}{'client CPU':>11}")
    for target, users, r in rows:
        t: Tally = r["tally"]
        s = summary(t.overhead_ms or [0])
        abandoned_at_backend = r["backend_requests"] - r["backend_finished"]
        server_side = target is not direct
        # (With --together the shared backend's counts and the generator's CPU belong to the whole round.)
        at_backend = (f"{abandoned_at_backend:>11}{r['backend_cancelled']:>10}"
                      if target.calls_backend or not args.together else f"{'':>21}")
        client_cpu = f"{r['client_cpu_ms_per_request']:>11.2f}" if not args.together or target is direct else ""
        print(f"{target.name:<46}{users:>5}{t.served:>8}{t.errors:>7}{t.abandoned:>10}{at_backend}"
              f"{s['median']:>7.1f}{s['p95']:>7.1f}{s['p99']:>7.1f}"
              + (f"{r['memory_warm']:>8.0f}{r['memory_end']:>7.0f}{r['connections_end']:>10}" if server_side else f"{'':>25}")
              + f"{r['backend_in_flight']:>10}"
              + (f"{r['server_cpu_ms_per_request']:>11.2f}" if server_side else f"{'':>11}")
              + client_cpu)
        for sample in t.error_samples[:3]:
            print(f"      error: {sample}")
    if args.rounds > 1 or args.together:
        for users in [int(u) for u in args.users.split(",")]:
            for floor, server in [(floor, other) for floor, others in groups for other in others]:
                cpu = {name: [r["server_cpu_ms_per_request"] for t, u, r in rows if t.name == name and u == users]
                       for name in (floor.name, server.name)}
                ratios = [c / f for f, c in zip(cpu[floor.name], cpu[server.name], strict=True)]
                rounds = ", ".join(f"{c:.2f}/{f:.2f} = {r:.2f}x"
                                   for f, c, r in zip(cpu[floor.name], cpu[server.name], ratios, strict=True))
                beyond = median(c - f for f, c in zip(cpu[floor.name], cpu[server.name], strict=True))
                print(f"{users} users, {server.name}: server CPU per request / per floor request, by round: "
                      f"{rounds}; median {median(ratios):.2f}x (rounds {min(ratios):.2f}x to "
                      f"{max(ratios):.2f}x), {beyond:.2f} ms beyond the floor")
    print("p50/p95/p99: overhead in ms = time seen by the user - the backend's 100 ms (the baseline rows are what the "
          "load generator and the backend add by themselves; the floor rows are the time of Jupyter's status endpoint, "
          "which calls no backend). 'at backend': abandoned requests that had reached the "
          "backend; 'cancelled': those the backend saw disconnected before finishing (goal: equal). 'conns end': the "
          "server's idle keep-alive connections to the backend after the run; 'in flight': requests the backend was "
          "still serving then (goal: 0). CPU: ms per request sent (served, abandoned or failed) of the Jupyter server "
          "and of the load generator.")


if __name__ == "__main__":
    main()
