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
- ``split``: later cells as a separate file before the FIM part (the default),
  with cache reuse, and a prefetch when the cursor enters the cell.

    python benchmarks/typing_replay.py [--cases 12] [--every 3] [--configs naive,inline,split]
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
from tqdm import tqdm

from _common import BENCH_NOTEBOOKS, jupyter_server, load_cells, summary

CONFIGS: dict[str, list[str]] = {
    "naive": ["--CodestralExtension.prompt_layout=inline", "--CodestralExtension.kv_cache=False"],
    "inline": ["--CodestralExtension.prompt_layout=inline"],
    "split": ["--CodestralExtension.prompt_layout=split"],
}
PREFETCH = {"split"}


@dataclass
class Case:
    notebook: str
    cells: list[dict[str, str]]
    cell_index: int
    line_index: int
    typed_from: int  # column where typing starts (the line's indentation)
    stop_at: int  # column of the last request: the rest of the line is the target

    @property
    def line(self) -> str:
        return self.cells[self.cell_index]["source"].split("\n")[self.line_index]

    @property
    def target(self) -> str:
        return self.line[self.stop_at :].strip()

    def request(self, column: int, **extra: Any) -> dict[str, Any]:
        """The notebook with the line typed up to ``column`` and the rest of the line not yet written."""
        lines = self.cells[self.cell_index]["source"].split("\n")
        head = "\n".join(lines[: self.line_index] + [self.line[:column]])
        tail = "\n".join(lines[self.line_index + 1 :])
        source = head + ("\n" + tail if tail else "")
        cells = [dict(c) for c in self.cells]
        cells[self.cell_index]["source"] = source
        return {"cells": cells, "cell_index": self.cell_index, "cursor": len(head), "path": self.notebook,
                "stream": True, "single_line": True, **extra}


def pick_cases(count: int, seed: int, folder: Path) -> list[Case]:
    """Deterministic cases: code lines long enough to type, in cells that are not the first."""
    rng = random.Random(seed)
    names = sorted(p.name for p in folder.glob("*.ipynb"))
    notebooks = load_cells(folder)
    candidates = []
    for name, cells in zip(names, notebooks):
        for ci, cell in enumerate(cells):
            if cell["cell_type"] != "code" or ci < 3 or cell["source"].lstrip().startswith("%%"):
                continue
            for li, line in enumerate(cell["source"].split("\n")):
                body = line.strip()
                if 16 <= len(body) <= 90 and not body.startswith(("#", "!", "%")):
                    candidates.append((name, cells, ci, li, line))
    chosen = rng.sample(candidates, count)
    cases = []
    for name, cells, ci, li, line in chosen:
        indent = len(line) - len(line.lstrip())
        body = len(line) - indent
        stop = indent + rng.randint(max(4, body // 3), max(5, (2 * body) // 3))
        cases.append(Case(name, cells, ci, li, indent, stop))
    return cases


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer string."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1 - previous[-1] / max(len(a), len(b))


@dataclass
class Results:
    warm_ttft: list[float] = field(default_factory=list)
    cold_ttft: list[float] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)
    errors: int = 0
    memory_mb: float = 0.0


def timed_completion(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, str]:
    """(ms to the first streamed text or the end, full completion)."""
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
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
    end = time.perf_counter()
    return ((first or end) - start) * 1000, completion


def server_memory_mb(proc: Any) -> float:
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def run_config(name: str, cases: list[Case], every: int, max_requests: int) -> Results:
    results = Results()
    with jupyter_server(*CONFIGS[name], "--CodestralExtension.backend=local") as (base, headers, proc):
        with httpx.Client(headers=headers, timeout=120) as client:
            deadline = time.monotonic() + 300
            while not client.get(f"{base}/status").json()["ready"]:
                if time.monotonic() > deadline:
                    raise SystemExit("the embedded model did not load")
                time.sleep(0.2)
            url = f"{base}/complete"
            for case in tqdm(cases, desc=name, unit="case"):
                columns = list(range(case.typed_from + every, case.stop_at, every)) + [case.stop_at]
                columns = columns[-max_requests:]
                if name in PREFETCH:
                    # The frontend warms the cache when the cursor enters the cell.
                    client.post(url, json=case.request(columns[0] - every, prefetch=True, stream=False))
                for n, column in enumerate(columns):
                    try:
                        ttft, completion = timed_completion(client, url, case.request(column))
                    except RuntimeError as error:
                        results.errors += 1
                        print(f"  error: {error}")
                        continue
                    (results.cold_ttft if n == 0 else results.warm_ttft).append(ttft)
                    if column == case.stop_at:
                        got = completion.split("\n")[0].strip()
                        results.exact.append(got == case.target)
                        results.similarity.append(edit_similarity(got, case.target))
            results.memory_mb = server_memory_mb(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="characters typed between requests")
    parser.add_argument("--max-requests", type=int, default=6, help="requests per case (the last ones)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--configs", default="naive,inline,split")
    parser.add_argument("--notebooks", type=Path, default=BENCH_NOTEBOOKS)
    args = parser.parse_args()

    cases = pick_cases(args.cases, args.seed, args.notebooks)
    table = {}
    for name in args.configs.split(","):
        table[name] = run_config(name, cases, args.every, args.max_requests)

    print(f"\n{len(cases)} cases (seed {args.seed}), a request every {args.every} typed characters, "
          f"up to {args.max_requests} per case; embedded model, through the HTTP endpoint")
    header = f"{'config':<8}{'warm TTFT med':>14}{'p95':>8}{'cold TTFT med':>14}{'p95':>8}{'exact':>7}{'edit sim':>9}{'errors':>7}{'memory MB':>10}"
    print(header)
    for name, r in table.items():
        warm, cold = summary(r.warm_ttft or [0]), summary(r.cold_ttft or [0])
        exact = sum(r.exact) / max(1, len(r.exact))
        sim = sum(r.similarity) / max(1, len(r.similarity))
        print(f"{name:<8}{warm['median']:>14.0f}{warm['p95']:>8.0f}{cold['median']:>14.0f}{cold['p95']:>8.0f}"
              f"{exact:>7.2f}{sim:>9.3f}{r.errors:>7}{r.memory_mb:>10.0f}")
    print("TTFT in ms. 'cold' is each case's first request (after a prefetch where the config has one); "
          "memory is the Jupyter server plus the model worker (RSS).")


if __name__ == "__main__":
    main()
