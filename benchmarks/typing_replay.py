"""Replay typing over real notebooks through ``POST codestral/complete``.

For each case (a line of a code cell, chosen with a fixed seed) the line is
typed character by character, with a completion request every few
characters, as the frontend does after its debounce.  Each request streams;
the time to its first text (or to its end, when the completion is empty) is
recorded.  The last request is the quality probe: its first line is compared
with what the author wrote (exact match, edit similarity).

Configurations run one after another in one invocation, each in its own
Jupyter server with the embedded model, so they compare on the same machine
in the same state:

- ``naive``: later cells in the FIM suffix and no KV-cache reuse (every
  request re-reads the whole prompt);
- ``inline``: the same prompt, with cache reuse;
- ``split``: later cells as a separate file before the FIM part, with cache
  reuse, and a prefetch when the cursor enters the cell;
- ``stable``: the notebook up to the cursor and the rest of the line, with
  cache reuse and the prefetch;
- ``adaptive``: the stable prompt at once, and the split one once the worker
  has read it (the prefetch reads both; the default now);
- ``before``: the code of a git revision (``--before``) with its defaults,
  run from an exported copy, to compare with what shipped then.

    python benchmarks/typing_replay.py [--cases 12] [--every 3] [--configs before,stable]

``--timeline`` sends each case's quality probe alone, when a user who entered
the cell would first pause on the line (``--think`` seconds, then the line's
start typed at ``--cps``), the prefetch sent on entering and left running as
the frontend leaves it: the first suggestion the user gets, and when it shows
(for the adaptive layout: from the richer prompt only if it was read by then):

    python benchmarks/typing_replay.py --timeline [--cases 120] [--configs before,adaptive]

``--along`` measures instead what the user sees while typing on a real
timeline (keys at ``--cps``, a pause after each word, a request after the
debounce, a newer request aborting the one in flight), with the frontend's
logic before and after typing along (``labextension/src/suggestions.ts``:
a pause whose typed text follows the suggestion on screen is answered from
it, without a request; no automatic request right after ``;``; the adaptive
delay), the two interleaved case by case on one server.  Reported per 100
typed characters: backend requests sent; and the share of keystrokes after
which a suggestion is on screen:

    python benchmarks/typing_replay.py --along [--cases 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import BENCH_NOTEBOOKS, jupyter_server, pauses, source_tree, summary, wait_model_ready
from tqdm import tqdm

from jupyter_codestral.evaluation import Case, pick_cases, score

CONFIGS: dict[str, list[str]] = {
    "naive": ["--CodestralExtension.prompt_layout=inline", "--CodestralExtension.kv_cache=False"],
    "inline": ["--CodestralExtension.prompt_layout=inline"],
    "split": ["--CodestralExtension.prompt_layout=split"],
    "stable": ["--CodestralExtension.prompt_layout=stable"],
    "adaptive": ["--CodestralExtension.prompt_layout=adaptive"],
    "before": [],
}
PREFETCH = {"split", "stable", "adaptive", "before"}


@dataclass
class Results:
    warm_ttft: list[float] = field(default_factory=list)
    cold_ttft: list[float] = field(default_factory=list)
    prefetch_ms: list[float] = field(default_factory=list)  # reading the cell's whole prompt, unwarmed
    exact: list[bool] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)  # one per case, in the cases' order
    completions: list[str] = field(default_factory=list)  # the quality probe's, one per case
    answered_from: list[dict[str, Any]] = field(default_factory=list)  # the probe's prompt, as the worker says
    shown_ms: list[float] = field(default_factory=list)  # --timeline: from entering the cell to the probe's first text
    errors: int = 0

    def probed(self, case: Case, completion: str, status: Any) -> None:
        """Score the quality probe's ``completion``, and note the prompt it was answered from (``status``)."""
        exact, similarity = score(completion, case.target)
        self.exact.append(exact)
        self.similarity.append(similarity)
        self.completions.append(completion)
        self.answered_from.append(answering_prompt(status))
    memory_mb: float = 0.0


def timed_completion(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, str]:
    """(ms to the first streamed text or the end, full completion)."""
    ttft, completion, _ = timed_completion_with_timings(client, url, body)
    return ttft, completion


def timed_completion_with_timings(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """Also the server's timings for the request."""
    ttft, done = timed_stream(client, url, body)
    return ttft, done.get("completion", ""), done.get("timings", {})


def timed_stream(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(ms to the first streamed text or the end, the stream's done event); an error event raises."""
    done: dict[str, Any] = {}
    start = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read().decode()[:200]}")
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if "delta" in event and first is None:
                first = time.perf_counter()
            if event.get("done"):
                done = event
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
    end = time.perf_counter()
    return ((first or end) - start) * 1000, done


def answering_prompt(status: Any) -> dict[str, Any]:
    """The prompt the embedded worker answered its last request from (``cache`` in ``codestral/status``:
    its size, and whether it was the richer or the nearer one); empty where the server has no such figures."""
    if isinstance(status, dict):
        cache = status.get("cache")
        if isinstance(cache, dict) and "prompt_tokens" in cache:
            return {key: cache.get(key) for key in ("prompt_tokens", "cached_tokens", "richer", "nearer")}
        for value in status.values():
            if found := answering_prompt(value):
                return found
    return {}


def server_memory_mb(proc: Any) -> float:
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def run_config(spec: str, cases: list[Case], every: int, max_requests: int, before: str,
               timeline: Timeline | None = None) -> Results:
    """``spec``: a configuration's name, then optionally ``:setting=value+setting=value`` (CodestralExtension settings).

    ``timeline``: the quality probe alone, when a user who entered the cell would pause first (the prefetch
    is not waited for, as the frontend does not wait for it)."""
    results = Results()
    name, _, extra = spec.partition(":")
    flags = [f"--CodestralExtension.{f}" for f in extra.split("+") if f]
    # What the model read stays on disk (kv_disk_dir): each configuration starts from an empty folder, or
    # it would restore what another one read (``before`` predates the disk cache).
    kv = tempfile.TemporaryDirectory()
    if name != "before":
        flags.append(f"--CodestralExtension.kv_disk_dir={kv.name}")
    with kv, source_tree(before if name == "before" else None) as env, jupyter_server(
        *CONFIGS[name], *flags, "--CodestralExtension.backend=local", env=env, refuse_amx=name == "before"
    ) as (base, headers, proc):
        with httpx.Client(headers=headers, timeout=120) as client:
            wait_model_ready(client, base)
            url = f"{base}/complete"
            for case in tqdm(cases, desc=spec, unit="case"):
                if timeline is not None:
                    probe_on_timeline(client, base, case, timeline, name in PREFETCH, results)
                    continue
                columns = list(range(case.typed_from + every, case.stop_at, every)) + [case.stop_at]
                columns = columns[-max_requests:]
                if name in PREFETCH:
                    # The frontend warms the cache when the cursor enters the cell.
                    started = time.perf_counter()
                    client.post(url, json=case.request(columns[0] - every, prefetch=True, stream=False))
                    results.prefetch_ms.append((time.perf_counter() - started) * 1000)
                for n, column in enumerate(columns):
                    try:
                        ttft, completion = timed_completion(client, url, case.request(column))
                    except RuntimeError as error:
                        results.errors += 1
                        print(f"  error: {error}")
                        continue
                    (results.cold_ttft if n == 0 else results.warm_ttft).append(ttft)
                    if column == case.stop_at:
                        results.probed(case, completion, client.get(f"{base}/status").json())
            results.memory_mb = server_memory_mb(proc)
    return results


@dataclass(frozen=True)
class Timeline:
    """When the user pauses after entering a cell: ``think`` seconds, then the line's start typed at ``cps``."""

    think: float
    cps: float

    def pause_after(self, case: Case) -> float:
        return self.think + (case.stop_at - case.typed_from) / self.cps


def probe_on_timeline(client: httpx.Client, base: str, case: Case, timeline: Timeline, prefetch: bool,
                      results: Results) -> None:
    """The quality probe at the user's first pause on the line, the prefetch sent on entering the cell and
    left running, as the frontend leaves it: what the user's first suggestion is, and when it shows."""
    url = f"{base}/complete"
    entered = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        warming = pool.submit(client.post, url, json=case.request(case.typed_from, prefetch=True, stream=False)) \
            if prefetch else None
        time.sleep(max(0.0, entered + timeline.pause_after(case) - time.perf_counter()))
        paused = time.perf_counter()
        try:
            ttft, completion = timed_completion(client, url, case.request())
        except RuntimeError as error:
            results.errors += 1
            print(f"  error: {error}")
            return
        finally:
            if warming is not None:
                warming.result()  # a request stops the prefetch: it ends at once
    results.cold_ttft.append(ttft)
    results.shown_ms.append((paused - entered) * 1000 + ttft)
    results.probed(case, completion, client.get(f"{base}/status").json())


def paired_difference(a: list[float], b: list[float], rounds: int = 10_000) -> tuple[float, float, float]:
    """Mean of a - b over paired cases, with a 95% bootstrap interval."""
    rng = random.Random(0)
    differences = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(rng.choices(differences, k=len(differences))) / len(differences) for _ in range(rounds))
    return means[int(0.025 * rounds)], sum(differences) / len(differences), means[int(0.975 * rounds)]


# -- what the user sees while typing, with and without typing along ----------------------------


@dataclass
class Shown:
    """One request of the timeline: where it was made and the text that had arrived, when."""

    at: int  # characters of the line typed when it was sent
    sent: float
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (time, full text so far)
    done: bool = False

    def text_at(self, moment: float) -> str | None:
        """The text on screen from this request at ``moment`` (None: nothing had arrived)."""
        seen = [text for when, text in self.arrivals if when <= moment]
        return seen[-1] if seen else None


@dataclass
class Along:
    requests: int = 0
    typed: int = 0
    keys_with_suggestion: int = 0
    keys: int = 0


def follows(request: Shown, line: str, typed: int, moment: float) -> str | None:
    """What is left of ``request``'s suggestion for the user who typed ``line[:typed]`` (suggestions.ts's typedAlong)."""
    text = request.text_at(moment)
    if text is None or typed < request.at:
        return None
    extra = line[request.at : typed]
    return text[len(extra) :] if text.startswith(extra) else None


async def replay_along(client: httpx.AsyncClient, url: str, case: Case, along: bool, cps: float, think: float,
                       debounce: float) -> Along:
    """Type ``case``'s line on a real timeline; count requests and keystrokes with a suggestion on screen."""
    line = case.line
    stops = set(pauses(line, case.typed_from))
    made: list[Shown] = []
    keys: list[tuple[float, int]] = []  # (time, characters typed) after each key
    inflight: asyncio.Task[None] | None = None
    gaps: list[float] = []
    latencies: list[float] = []

    async def read(shown: Shown) -> None:
        async with client.stream("POST", url, json=case.request(shown.at)) as reply:
            text = ""
            async for raw in reply.aiter_lines():
                event = json.loads(raw) if raw.strip() else {}
                if event.get("delta"):
                    text += event["delta"]
                    shown.arrivals.append((time.perf_counter(), text))
                if event.get("done"):
                    shown.done = True
                    latencies.append(event["timings"]["first_token_ms"])
                    return

    await client.post(url, json=case.request(case.typed_from, prefetch=True, stream=False))
    await asyncio.sleep(1.0)
    for typed in range(case.typed_from + 1, len(line) + 1):
        await asyncio.sleep(1 / cps)
        keys.append((time.perf_counter(), typed))
        gaps.append(1 / cps)
        if typed not in stops:
            continue
        # A pause: the core's debounce, then the provider.
        pause_started = time.perf_counter()
        await asyncio.sleep(debounce)
        if along:
            if any((rest := follows(m, line, typed, time.perf_counter())) is not None and (rest or not m.done)
                   for m in made):
                await asyncio.sleep(max(0.0, think - (time.perf_counter() - pause_started)))
                continue  # answered from the suggestion on screen
            if line[typed - 1] == ";":
                await asyncio.sleep(max(0.0, think - (time.perf_counter() - pause_started)))
                continue
            expected = sorted(latencies)[len(latencies) // 2] / 1000 if latencies else 0.0
            target = min(1.0, max(0.1, 1.5 * (sorted(gaps)[len(gaps) // 2] if len(gaps) >= 3 else 0), expected))
            await asyncio.sleep(max(0.0, target - debounce))
        if inflight is not None and not inflight.done():
            inflight.cancel()  # the newer request aborts the one in flight
        shown = Shown(typed, time.perf_counter())
        made.append(shown)
        inflight = asyncio.ensure_future(read(shown))
        await asyncio.sleep(max(0.0, think - (time.perf_counter() - pause_started)))
    if inflight is not None:
        try:
            await asyncio.wait_for(inflight, 30)
        except (asyncio.CancelledError, TimeoutError, httpx.HTTPError):
            pass
    result = Along(requests=len(made), typed=len(line) - case.typed_from, keys=len(keys))
    for moment, typed in keys:
        # The suggestion on screen: the latest request whose text had arrived by then, if the typed text follows it.
        visible = [m for m in made if m.text_at(moment) is not None]
        if visible:
            rest = follows(visible[-1], line, typed, moment)
            result.keys_with_suggestion += bool(rest)
    return result


async def run_along(cases: list[Case], cps: float, think: float, debounce: float) -> dict[str, Along]:
    totals = {"before": Along(), "along": Along()}
    with jupyter_server("--CodestralExtension.backend=embedded") as (base, headers, _):
        with httpx.Client(headers=headers, timeout=300) as sync:
            wait_model_ready(sync, base)
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(120.0)) as client:
            await client.get(f"{base}/status")  # the login cookie: one user, as in a browser
            for n, case in enumerate(tqdm(cases, desc="along", unit="case")):
                # Interleaved, the order swapped every case, so neither finds the other's cache more often.
                order = ["before", "along"] if n % 2 == 0 else ["along", "before"]
                for name in order:
                    one = await replay_along(client, f"{base}/complete", case, name == "along", cps, think,
                                             debounce)
                    total = totals[name]
                    total.requests += one.requests
                    total.typed += one.typed
                    total.keys += one.keys
                    total.keys_with_suggestion += one.keys_with_suggestion
    return totals


def main_along(cases: list[Case], cps: float, think: float, debounce: float) -> None:
    totals = asyncio.run(run_along(cases, cps, think, debounce))
    print(f"\n{len(cases)} lines typed at {cps:g} characters a second, a {think:g} s pause after each word, "
          f"{debounce * 1000:.0f} ms debounce; embedded model, through the HTTP endpoint")
    print(f"{'frontend':<10}{'typed':>7}{'requests':>10}{'per 100 chars':>15}{'keys with a suggestion':>24}")
    for name, t in totals.items():
        print(f"{name:<10}{t.typed:>7}{t.requests:>10}{100 * t.requests / max(1, t.typed):>15.1f}"
              f"{t.keys_with_suggestion / max(1, t.keys):>24.0%}")
    before, after = totals["before"], totals["along"]
    fewer = 1 - after.requests / max(1, before.requests)
    print(f"requests: {fewer:.0%} fewer with typing along (goal: at least 40%); "
          f"keys with a suggestion: {before.keys_with_suggestion / max(1, before.keys):.0%} before, "
          f"{after.keys_with_suggestion / max(1, after.keys):.0%} after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="characters typed between requests")
    parser.add_argument("--max-requests", type=int, default=6, help="requests per case (the last ones)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--configs", default="before,adaptive")
    parser.add_argument("--before", default="6e1d113", help="git revision of the 'before' configuration")
    parser.add_argument("--notebooks", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--log", type=Path, help="write each case's quality probe per configuration here (JSON lines)")
    parser.add_argument("--timeline", action="store_true", help="the quality probe alone, at the user's first "
                        "pause after entering the cell (--think, then the line's start typed at --cps), the prefetch "
                        "not waited for")
    parser.add_argument("--along", action="store_true", help="what the user sees, with and without typing along")
    parser.add_argument("--cps", type=float, default=5.0, help="--along, --timeline: characters a second")
    parser.add_argument("--think", type=float, default=0.8, help="--along: seconds paused after each word; "
                        "--timeline: after entering the cell")
    parser.add_argument("--debounce", type=float, default=0.2, help="--along: the core's debounce, in seconds")
    args = parser.parse_args()

    cases = pick_cases(args.notebooks, args.cases, args.seed)
    if args.along:
        main_along(cases, args.cps, args.think, args.debounce)
        return
    table = {}
    for name in args.configs.split(","):
        table[name] = run_config(name, cases, args.every, args.max_requests, args.before,
                                 Timeline(args.think, args.cps) if args.timeline else None)

    if args.timeline:
        print(f"\n{len(cases)} cases (seed {args.seed}), each the quality probe alone, sent {args.think} s after "
              f"entering the cell plus the line's start typed at {args.cps} characters a second, the prefetch "
              "left running; embedded model, through the HTTP endpoint")
    else:
        print(f"\n{len(cases)} cases (seed {args.seed}), a request every {args.every} typed characters, "
              f"up to {args.max_requests} per case; embedded model, through the HTTP endpoint")
    width = max(8, *(len(name) + 1 for name in table))
    header = f"{'config':<{width}}{'warm TTFT med':>14}{'p95':>8}{'cold TTFT med':>14}{'p95':>8}{'exact':>7}{'edit sim':>9}{'errors':>7}{'memory MB':>10}"
    print(header)
    for name, r in table.items():
        warm, cold = summary(r.warm_ttft or [0]), summary(r.cold_ttft or [0])
        exact = sum(r.exact) / max(1, len(r.exact))
        sim = sum(r.similarity) / max(1, len(r.similarity))
        print(f"{name:<{width}}{warm['median']:>14.0f}{warm['p95']:>8.0f}{cold['median']:>14.0f}{cold['p95']:>8.0f}"
              f"{exact:>7.2f}{sim:>9.3f}{r.errors:>7}{r.memory_mb:>10.0f}")
    if args.log:
        with args.log.open("w") as log:
            for name, r in table.items():
                for case, completion, sim, prompt in zip(cases, r.completions, r.similarity, r.answered_from,
                                                          strict=False):
                    log.write(json.dumps({"config": name, "case": f"{case.notebook}#{case.cell_index}:{case.line_index}",
                                          "target": case.target, "completion": completion, "similarity": sim,
                                          "answered_from": prompt}) + "\n")
    names = list(table)
    pairs = [(name, names[0]) for name in names[1:]]  # each against the first
    # and a configuration against its variant (``adaptive:kv_reuse=prefix``: reading from scratch)
    pairs += [(base, name) for name in names[1:] if (base := name.split(":")[0]) in names[1:] and base != name]
    for a, b in pairs:
        if all(len(table[n].similarity) == len(cases) for n in (a, b)):
            low, mean, high = paired_difference(table[a].similarity, table[b].similarity)
            print(f"edit similarity, {a} minus {b}, case by case: {mean:+.3f} "
                  f"(95% bootstrap interval {low:+.3f} to {high:+.3f})")
    for name, r in table.items():
        if r.prefetch_ms:
            p = summary(r.prefetch_ms)
            print(f"{name}: the prefetch on entering a cell (the whole prompt read cold) took median {p['median']:.0f} ms, "
                  f"p95 {p['p95']:.0f} ms, while the user had not typed yet")
    for name, r in table.items():
        if r.shown_ms:
            shown = summary(r.shown_ms)
            print(f"{name}: the first suggestion showed median {shown['median'] / 1000:.1f} s, p95 "
                  f"{shown['p95'] / 1000:.1f} s after entering the cell")
    for name, r in table.items():
        if known := [prompt for prompt in r.answered_from if prompt]:
            richer, nearer = sum(bool(p.get("richer")) for p in known), sum(bool(p.get("nearer")) for p in known)
            print(f"{name}: the quality probe was answered from the richer prompt in {richer} of {len(known)} cases, "
                  f"from the nearer one in {nearer}")
    print("TTFT in ms. 'cold' is each case's first request (after a prefetch where the config has one); "
          "memory is the Jupyter server plus the model worker (RSS).")


if __name__ == "__main__":
    main()
