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
- ``stable``: the notebook up to the cursor and the rest of the line (the
  default now), with cache reuse and the prefetch;
- ``before``: the code of a git revision (``--before``) with its defaults,
  run from an exported copy, to compare with what shipped then.

    python benchmarks/typing_replay.py [--cases 12] [--every 3] [--configs before,stable]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import BENCH_NOTEBOOKS, jupyter_server, source_tree, summary, wait_model_ready
from tqdm import tqdm

from jupyter_codestral.evaluation import Case, pick_cases, score

CONFIGS: dict[str, list[str]] = {
    "naive": ["--CodestralExtension.prompt_layout=inline", "--CodestralExtension.kv_cache=False"],
    "inline": ["--CodestralExtension.prompt_layout=inline"],
    "split": ["--CodestralExtension.prompt_layout=split"],
    "stable": ["--CodestralExtension.prompt_layout=stable"],
    "before": [],
}
PREFETCH = {"split", "stable", "before"}


@dataclass
class Results:
    warm_ttft: list[float] = field(default_factory=list)
    cold_ttft: list[float] = field(default_factory=list)
    prefetch_ms: list[float] = field(default_factory=list)  # reading the cell's whole prompt, unwarmed
    exact: list[bool] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)  # one per case, in the cases' order
    errors: int = 0
    memory_mb: float = 0.0


def timed_completion(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, str]:
    """(ms to the first streamed text or the end, full completion)."""
    ttft, completion, _ = timed_completion_with_timings(client, url, body)
    return ttft, completion


def timed_completion_with_timings(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """Also the server's timings for the request."""
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    first = None
    completion = ""
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
                completion = event["completion"]
                timings = event["timings"]
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
    end = time.perf_counter()
    return ((first or end) - start) * 1000, completion, timings


def server_memory_mb(proc: Any) -> float:
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def run_config(spec: str, cases: list[Case], every: int, max_requests: int, before: str) -> Results:
    """``spec``: a configuration's name, then optionally ``:setting=value+setting=value`` (CodestralExtension settings)."""
    results = Results()
    name, _, extra = spec.partition(":")
    flags = [f"--CodestralExtension.{f}" for f in extra.split("+") if f]
    with source_tree(before if name == "before" else None) as env, jupyter_server(
        *CONFIGS[name], *flags, "--CodestralExtension.backend=local", env=env
    ) as (base, headers, proc):
        with httpx.Client(headers=headers, timeout=120) as client:
            wait_model_ready(client, base)
            url = f"{base}/complete"
            for case in tqdm(cases, desc=spec, unit="case"):
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
                        exact, similarity = score(completion, case.target)
                        results.exact.append(exact)
                        results.similarity.append(similarity)
            results.memory_mb = server_memory_mb(proc)
    return results


def paired_difference(a: list[float], b: list[float], rounds: int = 10_000) -> tuple[float, float, float]:
    """Mean of a - b over paired cases, with a 95% bootstrap interval."""
    rng = random.Random(0)
    differences = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(rng.choices(differences, k=len(differences))) / len(differences) for _ in range(rounds))
    return means[int(0.025 * rounds)], sum(differences) / len(differences), means[int(0.975 * rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="characters typed between requests")
    parser.add_argument("--max-requests", type=int, default=6, help="requests per case (the last ones)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--configs", default="before,stable")
    parser.add_argument("--before", default="6e1d113", help="git revision of the 'before' configuration")
    parser.add_argument("--notebooks", type=Path, default=BENCH_NOTEBOOKS)
    args = parser.parse_args()

    cases = pick_cases(args.notebooks, args.cases, args.seed)
    table = {}
    for name in args.configs.split(","):
        table[name] = run_config(name, cases, args.every, args.max_requests, args.before)

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
    names = list(table)
    if len(names) >= 2 and all(len(table[n].similarity) == len(cases) for n in names[:2]):
        first, second = (table[n].similarity for n in names[:2])
        low, mean, high = paired_difference(second, first)
        print(f"edit similarity, {names[1]} minus {names[0]}, case by case: {mean:+.3f} "
              f"(95% bootstrap interval {low:+.3f} to {high:+.3f})")
    for name, r in table.items():
        if r.prefetch_ms:
            p = summary(r.prefetch_ms)
            print(f"{name}: the prefetch on entering a cell (the whole prompt read cold) took median {p['median']:.0f} ms, "
                  f"p95 {p['p95']:.0f} ms, while the user had not typed yet")
    print("TTFT in ms. 'cold' is each case's first request (after a prefetch where the config has one); "
          "memory is the Jupyter server plus the model worker (RSS).")


if __name__ == "__main__":
    main()
