"""llama.cpp's CPU kernels for the embedded model: what each choice costs in reading and writing, in one run.

Each choice is the real worker process (``python -m jupyter_codestral.embedded.worker --kernels K``), started
as the server starts it, with its self-check; then, for cases drawn from all the benchmark notebooks (a
fixed seed, the same cases for every choice, the choices taking turns case by case so that the machine's
noise falls on all of them alike):

- ``read``: a FIM prompt of the notebook up to a cell (``--tokens`` long, about), new to the worker: the
  tokens it read per second until its first token;
- ``warm``: the same prompt with one more character typed, as a keystroke asks it: the worker's first token;
- ``write``: the tokens per second it wrote after the first (``--write`` tokens asked, no stop).

The choices: ``repack`` (the default: llama.cpp's extra buffer types, its repacked Q4_K/Q8_0 kernels, with
AMX refused to the process), ``plain`` (no extra buffer types, the safe configuration a crashing worker
steps down to) and, on a CPU with AMX only, ``amx`` (llama.cpp's own choice, unproven: a crash is reported
as such).  The worker's memory and disk caches are its defaults; the disk cache is off so that nothing
from an earlier run is found.

    python benchmarks/cpu_kernels.py [--cases 24] [--tokens 400] [--write 32] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from _common import BENCH_NOTEBOOKS, load_cells, summary

from jupyter_codestral.embedded.cpu import Kernels, cpu_flags, cpu_model

CHARS_PER_TOKEN = 3.0  # about, for code; the worker reports the real count


@dataclass
class Worker:
    """One worker process, driven through its documented protocol."""

    kernels: Kernels
    proc: subprocess.Popen[str] = field(init=False)
    cpu: dict[str, Any] = field(default_factory=dict)
    load_s: float = 0.0
    crashed: str = ""
    next_id: int = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "jupyter_codestral.embedded.worker", "--kernels", self.kernels.value,
               "--disk-mb", "0"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        for event in self.events():
            if event.get("state") == "ready":
                self.cpu, self.load_s = event["cpu"], time.perf_counter() - started
                return
            if event["event"] == "fatal":
                raise SystemExit(f"{self.kernels}: {event['message']}")

    def events(self) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            yield json.loads(line)
        code = self.proc.wait()
        self.crashed = f"exit code {code}" if code >= 0 else f"signal {-code}"

    def complete(self, prompt: str, max_tokens: int) -> dict[str, Any] | None:
        """The worker's timings for one completion (None: it crashed)."""
        if self.crashed:
            return None
        assert self.proc.stdin is not None
        self.next_id += 1
        command = {"op": "complete", "id": self.next_id, "prompts": [prompt], "max_tokens": max_tokens,
                   "stop": [], "document": "bench.ipynb"}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        for event in self.events():
            if event.get("id") == self.next_id and event["event"] in ("done", "error"):
                return dict(event.get("timings") or {})
        return None

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def fim_prompts(cases: int, tokens: int, seed: int) -> list[tuple[str, str]]:
    """For each case, the FIM prompt of a notebook up to a code cell's first line, and after one more key."""
    def code_cells(cells: list[dict[str, str]]) -> list[int]:
        return [j for j, cell in enumerate(cells) if cell["cell_type"] == "code" and cell["source"].strip()][1:]

    notebooks = [cells for cells in load_cells(BENCH_NOTEBOOKS) if code_cells(cells)]
    rng = random.Random(seed)
    prompts: list[tuple[str, str]] = []
    for i in range(cases):
        cells = notebooks[i % len(notebooks)]  # every notebook in turn; a random code cell of it, not its first
        at = rng.choice(code_cells(cells))
        before = "\n\n".join(
            cell["source"] if cell["cell_type"] == "code" else "# " + cell["source"].replace("\n", "\n# ")
            for cell in cells[:at]
        )
        line = cells[at]["source"].split("\n")[0]
        typed = line[: max(1, len(line) // 2)]
        prefix = (before + "\n\n")[-int(tokens * CHARS_PER_TOKEN) :] + typed
        suffix = "\n\n" + "\n\n".join(cell["source"] for cell in cells[at + 1 : at + 2])[:200]

        def fim(prefix: str, suffix: str = suffix) -> str:
            return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"

        prompts.append((fim(prefix), fim(prefix + line[len(typed) : len(typed) + 1])))
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=400, help="about how long each new prompt is")
    parser.add_argument("--write", type=int, default=32, help="tokens written per case")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    flags = cpu_flags()
    choices = [Kernels.REPACK, Kernels.PLAIN] + ([Kernels.AMX] if "amx_tile" in flags else [])
    workers = [Worker(kernels) for kernels in choices]
    for worker in workers:
        worker.start()
    prompts = fim_prompts(args.cases, args.tokens, args.seed)
    figures: dict[Kernels, dict[str, list[float]]] = {k: {"read": [], "warm": [], "write": [], "n": []} for k in choices}
    for cold, typed in prompts:
        for worker in workers:
            first = worker.complete(cold, args.write)
            warm = worker.complete(typed, 1)
            if first is None or warm is None:
                continue
            seen = figures[worker.kernels]
            seen["read"].append(first["read_tokens"] / (first["worker_first_token_ms"] / 1000))
            seen["n"].append(first["read_tokens"])
            seen["warm"].append(warm["worker_first_token_ms"])
            writing_ms = first["worker_total_ms"] - first["worker_first_token_ms"]
            if first["generated_tokens"] > 1 and writing_ms > 0:
                seen["write"].append((first["generated_tokens"] - 1) / (writing_ms / 1000))
    for worker in workers:
        worker.stop()

    print(f"CPU: {cpu_model()}; flags: {' '.join(sorted(f for f in flags if f.startswith(('avx2', 'avx512f', 'amx'))))}")
    print(f"{args.cases} cases from {len(load_cells(BENCH_NOTEBOOKS))} notebooks (seed {args.seed}), prompts of "
          f"about {args.tokens} tokens; the choices take turns case by case")
    print(f"{'kernels':8} {'weights in':34} {'load s':>6} {'read tok/s p50':>14} {'p95':>5} "
          f"{'warm first ms p50':>17} {'p95':>5} {'write tok/s p50':>15} {'p95':>5}  cases")
    base: dict[str, float] = {}
    for worker in workers:
        seen = figures[worker.kernels]
        buffers = ", ".join(f"{name} {size:.0f}" for name, size in sorted(worker.cpu.get("buffers", {}).items()))
        if not seen["read"]:
            print(f"{worker.kernels.value:8} {buffers:34} {worker.load_s:6.1f}  crashed ({worker.crashed})")
            continue
        read, warm, write = summary(seen["read"]), summary(seen["warm"]), summary(seen["write"] or [0.0])
        base = base or {"read": read["median"], "warm": warm["median"], "write": write["median"]}
        print(f"{worker.kernels.value:8} {buffers:34} {worker.load_s:6.1f} {read['median']:14.1f} {read['p95']:5.1f} "
              f"{warm['median']:17.1f} {warm['p95']:5.1f} {write['median']:15.1f} {write['p95']:5.1f}  "
              f"{len(seen['read'])}" + (f" (crashed: {worker.crashed})" if worker.crashed else ""))
    for worker in workers[1:]:
        seen = figures[worker.kernels]
        if seen["read"] and base:
            read = summary(seen["read"])["median"] / base["read"] - 1
            write = summary(seen["write"] or [0.0])["median"] / base["write"] - 1
            print(f"{worker.kernels.value} against repack: reading {read:+.0%}, writing {write:+.0%} (medians)")
    tokens = summary([n for seen in figures.values() for n in seen["n"]])
    print(f"prompt tokens read per case: median {tokens['median']:.0f}, p95 {tokens['p95']:.0f}")


if __name__ == "__main__":
    main()
