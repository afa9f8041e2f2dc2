"""Notebook authoring replayed on a real timeline, as the user feels it (embedded model, HTTP endpoint).

A simulated user writes cells in real notebooks through ``POST codestral/complete``
on a real Jupyter server, with the frontend's behaviour reproduced:

- entering a cell: a prefetch (the cell's prompt read ahead) after ``--prefetch-delay`` (0.3 s), or
  at once when a run (Shift+Enter) moved the cursor there (configurations with ``prefetch_on_run``);
- the first key ``--start`` (1 s) after entering; keys at ``--cps`` (5) characters a second,
  with a pause of ``--think`` (0.8 s) after each word or run of punctuation;
- a request ``--debounce`` (0.2 s) after a pause begins; it is abandoned at the next key (the
  frontend aborts it and JupyterLab drops its text); the last request of the line runs to its end;
- after running a cell (configurations with ``execute_prefetch``), a prefetch for the next cell
  as soon as the kernel has answered, as the frontend does.

Scenarios, each over ``--sessions`` sessions (a session: a cell entered and its first line typed),
drawn with ``--seed`` from all the benchmark notebooks, a few cells from each:

- ``append``: the user writes the first line of a new last cell, pastes the rest, moves on to a
  new cell; the notebook grows by the real notebook's next cells;
- ``kernel``: the same with a live kernel: the notebook so far was run, and each cell is run
  (Shift+Enter) as the user leaves it, its execution count sent as JupyterLab sends it;
- ``revisit``: the whole notebook is there; the user was at its end, and jumps to earlier cells
  to write their first lines again (the rest of each cell below the cursor);
- ``reopen``: the server restarts (what the model read stays on disk, ``kv_disk_dir``); the user
  reopens the notebooks of ``append`` and writes its cells again.

Requests start only once something is typed (JupyterLab's inline completer asks at the end of a
line typed in); the prefetch on entering a cell reads ahead.

For each request: did its first text arrive before it was abandoned, and how long after it was
sent; the edit similarity of the text it showed (its first line against the rest of the line).
Configurations run one after another in one invocation: ``before`` is the code of ``--before``
(a git revision, run from an exported copy), ``now`` the working tree.

    python benchmarks/authoring_replay.py [--scenarios append,kernel,revisit,reopen] [--configs before,now]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import BENCH_NOTEBOOKS, execute, jupyter_server, load_cells, pauses, source_tree, wait_model_ready

from jupyter_codestral.evaluation import edit_similarity
from jupyter_codestral.stats import percentile

# The code at the start of the work on moved prompts (first suggestion on every notebook).
DEFAULT_BEFORE = "168c9a7"


@dataclass(frozen=True)
class Config:
    name: str
    revision: str | None  # None: the working tree
    execute_prefetch: bool  # the frontend prefetches the next cell when a run ends
    flags: tuple[str, ...] = ()
    prefetch_on_run: bool = False  # a cell entered by a run (Shift+Enter) is prefetched at once


@dataclass
class Request:
    scenario: str
    cell: str
    first: bool  # the first request of the cell
    last: bool  # the request after the line's last key (it runs to its end)
    sent: float
    life: float | None = None  # seconds until abandoned (None: ran to its end)
    first_text: float | None = None  # seconds after sending
    answered: float | None = None  # seconds after sending, to its first text or to its end
    shown: str = ""
    target: str = ""
    cache: dict[str, Any] | None = None  # the worker's figures when it ended (with --log)


@dataclass
class Timeline:
    cps: float
    think: float
    debounce: float
    start: float
    prefetch_delay: float


@dataclass
class Cell:
    """One cell the user writes: the notebook around it, and the line typed."""

    notebook: str
    index: int  # position in the notebook
    line: str  # the line the user types (the cell's first line)


@dataclass
class Results:
    requests: list[Request] = field(default_factory=list)
    memory_mb: float = 0.0


def cells_to_write(notebooks: list[tuple[str, list[dict[str, str]]]], sessions: int, seed: int,
                   spread: bool) -> list[Cell]:
    """``sessions`` code cells with a code first line, a few from every notebook (as many from each):
    consecutive ones past the first 40% of the notebook (the user writes on), or, with ``spread``,
    anywhere from 20% to 90% in random order (the user goes back to earlier cells)."""
    rng = random.Random(seed)
    usable = []
    for name, cells in notebooks:
        low, high = (0.2, 0.9) if spread else (0.4, 1.0)
        candidates = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                      and len(cells) * low <= i < len(cells) * high
                      and 10 <= len(c["source"].split("\n")[0].strip()) <= 80
                      and not c["source"].lstrip().startswith(("#", "%", "!"))]
        usable.append((name, cells, candidates))
    chosen: list[list[Cell]] = []
    per_notebook = 1
    while sum(len(group) for group in chosen) < sessions and per_notebook <= 20:
        chosen = []
        for name, cells, candidates in usable:
            count = min(per_notebook, len(candidates))
            if not count:
                continue
            if spread:
                picked = sorted(rng.sample(candidates, count), key=lambda _: rng.random())
            else:
                start = rng.randrange(0, len(candidates) - count + 1)
                picked = candidates[start : start + count]
            chosen.append([Cell(name, i, cells[i]["source"].split("\n")[0]) for i in picked])
        per_notebook += 1
    # As many from each notebook, the last notebooks giving one less where there are more than asked.
    while sum(len(group) for group in chosen) > sessions:
        longest = max(chosen, key=len)
        longest.pop()
    return [cell for group in chosen for cell in group if group]


class Frontend:
    """What the JupyterLab extension does, for one user, over HTTP."""

    def __init__(self, client: httpx.AsyncClient, base: str, timeline: Timeline, config: Config,
                 record_cache: bool) -> None:
        self.client = client
        self.base = base
        self.t = timeline
        self.config = config
        self.record_cache = record_cache
        self.prefetch_task: asyncio.Task[None] | None = None

    def body(self, cells: list[dict[str, Any]], index: int, cursor: int, path: str, kernel_id: str | None,
             **extra: Any) -> dict[str, Any]:
        body = {"cells": cells, "cell_index": index, "cursor": cursor, "path": path, "language": "python",
                "max_tokens": 128, **extra}
        return body | ({"kernel_id": kernel_id} if kernel_id else {})

    def prefetch(self, body: dict[str, Any]) -> None:
        """A new prefetch replaces the one before (the frontend aborts it)."""
        if self.prefetch_task is not None:
            self.prefetch_task.cancel()

        async def send() -> None:
            try:
                await self.client.post(f"{self.base}/complete", json=body | {"prefetch": True, "stream": False})
            except httpx.HTTPError:
                pass

        self.prefetch_task = asyncio.ensure_future(send())

    async def request(self, body: dict[str, Any], record: Request, abandon: asyncio.Event) -> None:
        """A streamed completion, abandoned when ``abandon`` is set (the next key)."""
        started = time.perf_counter()

        async def read() -> None:
            async with self.client.stream("POST", f"{self.base}/complete", json=body | {"stream": True}) as reply:
                async for line in reply.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("delta"):
                        if record.first_text is None:
                            record.first_text = record.answered = time.perf_counter() - started
                        record.shown += event["delta"]
                    if event.get("done") or event.get("error"):
                        if record.answered is None:
                            record.answered = time.perf_counter() - started
                        if self.record_cache:  # what the worker read for it (its last job: this one, mostly)
                            record.cache = (await self.client.get(f"{self.base}/status")).json().get("cache")
                        return

        reading = asyncio.ensure_future(read())
        stop = asyncio.ensure_future(abandon.wait())
        await asyncio.wait([reading, stop], return_when=asyncio.FIRST_COMPLETED, timeout=60)
        if not reading.done():
            record.life = time.perf_counter() - started
            reading.cancel()  # closes the connection: the server stops the work
        stop.cancel()
        try:
            await reading
        except (asyncio.CancelledError, httpx.HTTPError):
            pass

    async def write_line(self, scenario: str, cell: Cell, cells: list[dict[str, Any]], index: int, tail: str,
                         kernel_id: str | None, results: Results, entered: float, by_run: bool = False) -> None:
        """The user enters cell ``index`` (its text is ``tail``; ``by_run``: a run moved the cursor there),
        types ``cell.line`` before ``tail``."""
        path = cell.notebook
        cells[index] = {**cells[index], "source": tail}
        delay = 0.0 if by_run and self.config.prefetch_on_run else self.t.prefetch_delay
        await asyncio.sleep(max(0.0, entered + delay - time.perf_counter()))
        self.prefetch(self.body(cells, index, len(tail), path, kernel_id))
        await asyncio.sleep(max(0.0, entered + self.t.start - time.perf_counter()))
        stops = pauses(cell.line)
        tasks = []
        typed = 0
        for n, stop in enumerate(stops):
            while typed < stop:  # a burst of keys
                typed += 1
                await asyncio.sleep(1 / self.t.cps)
            # The pause: a request after the debounce, abandoned at the next key.
            await asyncio.sleep(self.t.debounce)
            cells[index] = {**cells[index], "source": cell.line[:typed] + tail}
            record = Request(scenario, f"{path}#{index}", n == 0, n == len(stops) - 1, time.perf_counter(),
                             target=cell.line[typed:].strip())
            results.requests.append(record)
            abandon = asyncio.Event()
            tasks.append(asyncio.ensure_future(self.request(self.body(cells, index, typed, path, kernel_id),
                                                            record, abandon)))
            if n < len(stops) - 1:
                await asyncio.sleep(self.t.think - self.t.debounce)
                abandon.set()
        await asyncio.gather(*tasks)


def notebook_cells(cells: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"cell_type": c["cell_type"], "source": c["source"]} for c in cells]


async def run_scenario(scenario: str, frontend: Frontend, writes: list[Cell], notebooks: dict[str, list[dict[str, str]]],
                       root: str, headers: dict[str, str], results: Results) -> None:
    """``writes``: the cells of this scenario, grouped by notebook."""
    by_notebook: dict[str, list[Cell]] = {}
    for cell in writes:
        by_notebook.setdefault(cell.notebook, []).append(cell)
    for name, group in by_notebook.items():
        source = notebooks[name]
        kernel_id = None
        ws_url = ""
        if scenario == "kernel":
            kernel_id = (await frontend.client.post(f"{root}/api/kernels", json={"name": "python3"})).json()["id"]
            ws_url = root.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels"
        try:
            if scenario == "revisit":
                cells = notebook_cells(source)
                # The user was at the end of the notebook: its prompt is what the model last read.
                end = len(cells) - 1
                await frontend.client.post(f"{frontend.base}/complete", json=frontend.body(
                    cells, end, len(cells[end]["source"]), name, None, prefetch=True, stream=False), timeout=600)
                for cell in group:
                    rest = source[cell.index]["source"].split("\n", 1)
                    tail = "\n" + rest[1] if len(rest) > 1 else ""
                    await frontend.write_line(scenario, cell, cells, cell.index, tail, None, results,
                                              time.perf_counter())
                    cells[cell.index] = dict(notebook_cells(source)[cell.index])
                continue
            first = group[0].index
            cells = notebook_cells(source[:first])
            if kernel_id:
                for c in cells:  # the notebook so far was run
                    if c["cell_type"] == "code":
                        c["execution_count"] = await run(ws_url, headers, c["source"])
            if scenario != "reopen":
                # Before the first cell is written, the user was typing at the notebook's end.  (Reopened
                # after a restart, the model has read nothing since it started: what it finds is on disk.)
                await frontend.client.post(f"{frontend.base}/complete", json=frontend.body(
                    [*cells, {"cell_type": "code", "source": ""}], first, 0, name, kernel_id, prefetch=True,
                    stream=False), timeout=600)
            position = first
            running: asyncio.Task[None] | None = None
            for cell in group:
                by_run = running is not None  # Shift+Enter on the cell written before, or on the last pasted
                if running is not None and position < cell.index:
                    await running  # the cells between are run after it
                while position < cell.index:  # cells between: pasted in as they are (and run)
                    pasted = dict(notebook_cells(source)[position])
                    if kernel_id and pasted["cell_type"] == "code":
                        pasted["execution_count"] = await run(ws_url, headers, pasted["source"])
                    cells.append(pasted)
                    position += 1
                cells.append({"cell_type": "code", "source": ""})
                await frontend.write_line(scenario, cell, cells, len(cells) - 1, "", kernel_id, results,
                                          time.perf_counter(), by_run)
                written = cells[-1] = dict(notebook_cells(source)[cell.index])  # the rest of the cell, pasted
                position += 1
                if kernel_id:
                    # Shift+Enter: the cell runs while the user moves on to a new cell.
                    running = asyncio.ensure_future(run_then_prefetch(frontend, ws_url, headers, written, cells,
                                                                      name, kernel_id))
            if running is not None:
                await running
        finally:
            if kernel_id:
                await frontend.client.delete(f"{root}/api/kernels/{kernel_id}")


async def run_then_prefetch(frontend: Frontend, ws_url: str, headers: dict[str, str], cell: dict[str, Any],
                            cells: list[dict[str, Any]], path: str, kernel_id: str) -> None:
    """Run ``cell``; when the kernel has answered, the frontend prefetches the cell the user is in."""
    cell["execution_count"] = await run(ws_url, headers, cell["source"])
    if frontend.config.execute_prefetch and cells[-1] is not cell:
        current = len(cells) - 1
        frontend.prefetch(frontend.body(cells, current, len(cells[current]["source"]), path, kernel_id))


async def run(ws_url: str, headers: dict[str, str], code: str) -> int | None:
    """Run a cell in the kernel (errors are part of notebook life); its execution number."""
    try:
        reply = await asyncio.to_thread(execute, ws_url, headers, code, False, 60)
    except Exception:  # noqa: BLE001 - a cell that hangs or kills the connection: go on without it
        return None
    return reply.get("execution_count")


def server_memory_mb(proc: Any) -> float:
    """The Jupyter server's and the model worker's RSS (the kernels it started are the user's, not ours)."""
    root = psutil.Process(proc.pid)
    ours = [p for p in root.children(recursive=True) if "ipykernel" not in " ".join(p.cmdline())]
    return sum(p.memory_info().rss for p in [root, *ours]) / 2**20


async def run_on_server(config: Config, scenarios: list[str], writes: dict[str, list[Cell]],
                        notebooks: dict[str, list[dict[str, str]]], timeline: Timeline, kv: Path,
                        results: Results, record_cache: bool) -> None:
    """``scenarios`` on one Jupyter server (what the model reads goes to disk in ``kv``)."""
    with source_tree(config.revision) as env, jupyter_server(
        "--CodestralExtension.backend=local", f"--CodestralExtension.kv_disk_dir={kv}", *config.flags, env=env
    ) as (base, headers, proc):
        with httpx.Client(headers=headers, timeout=300) as sync:
            wait_model_ready(sync, base)
        root = base.rsplit("/codestral", 1)[0]
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(600.0)) as client:
            await client.get(f"{base}/status")  # the login cookie: one user, as in a browser
            frontend = Frontend(client, base, timeline, config, record_cache)
            for scenario in scenarios:
                started = time.perf_counter()
                await run_scenario(scenario, frontend, writes[scenario], notebooks, root, headers, results)
                print(f"  {config.name} {scenario}: {time.perf_counter() - started:.0f} s", flush=True)
        results.memory_mb = max(results.memory_mb, server_memory_mb(proc))


async def run_config(config: Config, scenarios: list[str], writes: dict[str, list[Cell]],
                     notebooks: dict[str, list[dict[str, str]]], timeline: Timeline, record_cache: bool) -> Results:
    """The scenarios on a server; ``reopen`` on a second one started after the first stopped."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="codestral-kv-") as kv:
        first = [s for s in scenarios if s != "reopen"]
        if first:
            await run_on_server(config, first, writes, notebooks, timeline, Path(kv), results, record_cache)
        if "reopen" in scenarios:
            await run_on_server(config, ["reopen"], writes, notebooks, timeline, Path(kv), results, record_cache)
    return results


def fmt_ms(value: float) -> str:
    return "never" if math.isinf(value) else f"{value * 1000:.0f}"


def similarity(request: Request) -> float:
    return edit_similarity(request.shown.split("\n")[0].strip(), request.target)


@dataclass(frozen=True)
class Figures:
    """One scenario's figures for one configuration."""

    first: list[float]  # the cells' first requests: seconds to their first text (inf: none before the next key)
    requests: list[Request]

    @property
    def others(self) -> list[Request]:
        return [r for r in self.requests if not r.first]

    @staticmethod
    def within(requests: list[Request], limit: float) -> float:
        if not requests:
            return float("nan")
        return sum(r.first_text is not None and r.first_text <= limit for r in requests) / len(requests)


def figures(requests: list[Request]) -> Figures:
    return Figures(sorted(r.first_text if r.first_text is not None else math.inf for r in requests if r.first),
                   requests)


def report(name: str, scenario: str, requests: list[Request], common: set[tuple[str, int]], width: int = 8) -> str:
    f = figures(requests)
    # The last request runs to its end; with no text, the model proposed nothing (the line was complete).
    lasts = sorted(r.first_text for r in requests if r.last and r.first_text is not None)
    empty = sum(r.last and r.first_text is None and r.life is None for r in requests)
    shown = [r for r in requests if r.first_text is not None]
    both = [similarity(r) for n, r in enumerate(requests) if (r.cell, n) in common]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return (f"{name:<{width}}{scenario:<9}{len(f.first):>6}{fmt_ms(percentile(f.first, 0.5)):>9}"
            f"{fmt_ms(percentile(f.first, 0.9)):>9}{len(requests):>10}{f.within(requests, 0.3):>9.0%}"
            f"{f.within(f.others, 0.3):>9.0%}{f.within(requests, 1.0):>7.0%}{len(shown) / len(requests):>8.0%}"
            f"{mean([similarity(r) for r in shown]):>8.3f}{mean(both):>9.3f}"
            f"{fmt_ms(percentile(lasts, 0.5)) if lasts else '-':>10}{empty:>7}")


# The goals (embedded 0.5B, these machines): (scenario, what, the figure, the bound).
GOALS = (
    ("kernel", "first request's first text p50", lambda f: percentile(f.first, 0.5), 0.150),
    ("kernel", "first request's first text p90", lambda f: percentile(f.first, 0.9), 0.300),
    ("kernel", "other requests within 300 ms", lambda f: -f.within(f.others, 0.3), -0.95),
    ("revisit", "first request's first text p50", lambda f: percentile(f.first, 0.5), 0.500),
    ("revisit", "other requests within 300 ms", lambda f: -f.within(f.others, 0.3), -0.80),
    ("reopen", "first request's first text p50", lambda f: percentile(f.first, 0.5), 0.300),
)


def goals(name: str, results: Results) -> list[str]:
    lines = []
    for scenario, what, figure, bound in GOALS:
        requests = [r for r in results.requests if r.scenario == scenario]
        if not requests:
            continue
        value = figure(figures(requests))
        shown = f"{-value:.0%}" if bound < 0 else fmt_ms(value) + " ms"
        goal = f"{-bound:.0%}" if bound < 0 else f"{bound * 1000:.0f} ms"
        lines.append(f"goal {name} {scenario}: {what} {shown} (goal {'>=' if bound < 0 else '<='} {goal}): "
                     f"{'meets' if value <= bound else 'misses'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="append,kernel,revisit,reopen")
    parser.add_argument("--configs", default="before,now", help="before, now, and now:FLAG=VALUE variants")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the 'before' configuration")
    parser.add_argument("--sessions", type=int, default=60, help="cells written per scenario, from all notebooks")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cps", type=float, default=5.0, help="characters a second while typing a word")
    parser.add_argument("--think", type=float, default=0.8, help="seconds paused after each word")
    parser.add_argument("--debounce", type=float, default=0.2)
    parser.add_argument("--start", type=float, default=1.0, help="seconds from entering a cell to the first key")
    parser.add_argument("--prefetch-delay", type=float, default=0.3)
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--log", type=Path, help="write every request's record here (JSON lines), with the "
                        "worker's figures when it ended")
    parser.add_argument("--cells", help="write only these cells (notebook#index,...: to look into a few sessions)")
    args = parser.parse_args()

    names = sorted(p.name for p in args.folder.glob("*.ipynb"))
    loaded = list(zip(names, load_cells(args.folder), strict=True))
    rng = random.Random(args.seed)
    rng.shuffle(loaded)
    per_scenario = args.sessions
    onward = cells_to_write(loaded, per_scenario, args.seed, spread=False)
    back = cells_to_write(loaded, per_scenario, args.seed, spread=True)
    if args.cells:
        picked = {tuple(spec.rsplit("#", 1)) for spec in args.cells.split(",")}
        onward = [c for c in onward if (c.notebook, str(c.index)) in picked]
        back = [c for c in back if (c.notebook, str(c.index)) in picked]
    writes = {"append": onward, "kernel": onward, "revisit": back, "reopen": onward}
    notebooks = dict(loaded)
    timeline = Timeline(args.cps, args.think, args.debounce, args.start, args.prefetch_delay)
    configs = []
    for spec in args.configs.split(","):
        name, _, flags = spec.partition(":")
        extra = tuple(f"--CodestralExtension.{f}" for f in flags.split("+") if f)
        now = name != "before"
        configs.append(Config(spec, args.before if name == "before" else None, now, extra, prefetch_on_run=now))

    scenarios = args.scenarios.split(",")
    table = {}
    for config in configs:
        print(f"{config.name}: {per_scenario} cells per scenario", flush=True)
        table[config.name] = asyncio.run(run_config(config, scenarios, writes, notebooks, timeline,
                                                    record_cache=args.log is not None))

    print(f"\n{per_scenario} cells written per scenario ({len({c.notebook for c in onward})} notebooks); typing "
          f"{args.cps:g} chars/s, {args.think:g} s pause after each word, {args.debounce * 1000:.0f} ms debounce, "
          f"first key {args.start:g} s after entering, prefetch {args.prefetch_delay * 1000:.0f} ms after entering "
          f"(at once when a run moved the cursor there, except 'before'); "
          f"embedded model through the HTTP endpoint; 'before' is {args.before}")
    width = max(8, *(len(name) + 1 for name in table))
    print(f"{'config':<{width}}{'scenario':<9}{'cells':>6}{'1st p50':>9}{'1st p90':>9}{'requests':>10}{'<=300ms':>9}"
          f"{'others':>9}{'<=1s':>7}{'shown':>8}{'ES':>8}{'ES all':>9}{'last p50':>10}{'empty':>7}")
    for scenario in scenarios:
        runs = {name: [r for r in results.requests if r.scenario == scenario] for name, results in table.items()}
        shown_by = [{(r.cell, n) for n, r in enumerate(requests) if r.first_text is not None}
                    for requests in runs.values()]
        common = set.intersection(*shown_by) if shown_by else set()
        for name, requests in runs.items():
            print(report(name, scenario, requests, common, width))
    for scenario in scenarios:  # the first requests again, a request the model ended with no text counted as answered
        for name, results in table.items():
            firsts = [r for r in results.requests if r.scenario == scenario and r.first]
            answered = sorted(r.answered if r.answered is not None else math.inf for r in firsts)
            ended_empty = sum(r.first_text is None and r.answered is not None for r in firsts)
            if answered:
                print(f"{name} {scenario}: first requests answered (first text, or the model's end with none: "
                      f"{ended_empty} of {len(firsts)}) p50 {fmt_ms(percentile(answered, 0.5))} ms, "
                      f"p90 {fmt_ms(percentile(answered, 0.9))} ms")
    if args.log:
        with args.log.open("w") as log:
            for name, results in table.items():
                for r in results.requests:
                    log.write(json.dumps({"config": name, **r.__dict__}) + "\n")
    for name, results in table.items():
        notebooks_open = len({c.notebook for cells in writes.values() for c in cells})
        print(f"{name}: memory at the end (Jupyter server + model worker, RSS, after {notebooks_open} notebooks): "
              f"{results.memory_mb:.0f} MB (goal < 1536 MB: {'meets' if results.memory_mb < 1536 else 'misses'})")
    for name, results in table.items():
        for line in goals(name, results):
            print(line)
    print("'1st': the cell's first request, ms from sending it to its first text ('never': abandoned at the next "
          "key before any); '<=300ms', '<=1s': requests whose text came that soon (before the next key); 'others': "
          "the requests after each cell's first within 300 ms; "
          "'shown': before the next key at all; ES: edit similarity of the first line shown against the rest of "
          "the line, over the requests this configuration showed; 'ES all': over the requests every configuration "
          "showed; 'last': the request after the line's last key, which runs to its end (p50 over those that showed "
          "text); 'empty': those that ended with no text (the model proposed nothing: the line was complete).")


if __name__ == "__main__":
    main()
