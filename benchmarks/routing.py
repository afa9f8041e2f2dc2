"""Routing: the right engine for each kind of completion, and a fallback that costs nothing.

Masked lines of the shared notebooks (``evaluation.pick_cases``) are asked two ways:

- ``line``: the line typed up to a point; the rest of the line is the target (route ``line``);
- ``block``: the cursor at the start of the (empty) line; the whole line is the target (route ``block``).

Each configuration runs in its own Jupyter server, in one run, over the same cases, through
``POST codestral/complete`` (streamed; first text as the client sees it):

(a) ``embedded``: the embedded 0.5B model on every route;
(b) ``strong``: the 1.5B model served by llama-cpp-python's own server (``python -m llama_cpp.server``,
    a real OpenAI-compatible server) on every route;
(c) ``routed``: ``line`` -> embedded, ``block`` -> strong (then embedded);
(d) ``outage``: the first backend of every route is down (nothing listens at its port), the embedded
    model behind it: 0 errors wanted, first text no more than 50 ms later than (a);
(e) ``hedged``: as (c), with ``block`` hedged: the embedded model starts too when the strong one has
    sent nothing after ``--hedge-ms``.

Block and line cases are different lines, line cases first (so the embedded model meets them with the
same cache in every configuration), and consecutive cases come from different notebooks. Each case is
asked twice: ``cold`` (the model reads the prompt: what a user meets on entering a line) and ``warm``
(the same request again: what a keystroke costs once the prompt is read, where the router's own cost
shows). Each configuration gets the same cases in the same order, so first-text times are also
compared case by case (the paired difference).

    pip install ".[server,strong]"
    python benchmarks/routing.py [--cases 12] [--configs embedded,strong,routed,outage,hedged]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import BENCH_NOTEBOOKS, free_port, jupyter_server, wait_for
from tqdm import tqdm
from typing_replay import timed_stream

from jupyter_codestral.embedded.model_files import MODELS, ensure_model
from jupyter_codestral.evaluation import Case, pick_cases, score
from jupyter_codestral.stats import median, percentile

STRONG = "qwen2.5-coder-1.5b-instruct-q4_k_m"
KINDS = ("line", "block")


@contextmanager
def llama_cpp_server(model: Path, threads: int) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback; yields its URL."""
    port = free_port()
    log = (Path("/tmp") / f"llama-cpp-server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", STRONG, "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/v1/models", timeout=180)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def configurations(strong_url: str, hedge_ms: float) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """name -> (backends, routes)."""
    embedded = {"backend": "embedded"}
    # The 1.5B on two CPU cores reads a cold 1,000-token prompt in 7-9 s (and a request may queue behind
    # another): it must not be timed out, or this would measure the fallback instead.
    strong = {"backend": "openai", "url": strong_url, "model": STRONG, "first_token_timeout_ms": 60_000,
              "timeout": 60}
    down = {"backend": "openai", "url": f"http://127.0.0.1:{free_port()}", "model": STRONG}
    every = ("line", "block", "comment")
    return {
        "embedded": ({"embedded": embedded}, {k: ["embedded"] for k in every}),
        "strong": ({"strong": strong}, {k: ["strong"] for k in every}),
        "routed": ({"embedded": embedded, "strong": strong},
                   {"line": ["embedded"], "block": ["strong", "embedded"], "comment": ["strong", "embedded"]}),
        "outage": ({"down": down, "embedded": embedded}, {k: ["down", "embedded"] for k in every}),
        "hedged": ({"embedded": embedded, "strong": strong},
                   {"line": ["embedded"], "block": {"backends": ["strong", "embedded"], "hedge_ms": hedge_ms},
                    "comment": ["strong", "embedded"]}),
    }


@dataclass
class Outcome:
    kind: str
    first_ms: float  # cold
    warm_ms: float
    exact: bool
    similarity: float
    backend: str | None
    error: str | None = None


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)

    def of(self, kind: str | None) -> list[Outcome]:
        return [o for o in self.outcomes if kind is None or o.kind == kind]


def request_for(case: Case, kind: str, max_tokens: int) -> dict[str, Any]:
    if kind == "line":
        return case.request(max_tokens=max_tokens)
    return case.request(case.typed_from, single_line=False, max_tokens=max_tokens)


def target_for(case: Case, kind: str) -> str:
    return case.target if kind == "line" else case.line.strip()


def run_config(name: str, backends: dict[str, Any], routes: dict[str, Any], cases: dict[str, list[Case]],
               args: argparse.Namespace) -> Results:
    results = Results()
    env = {"JUPYTER_CODESTRAL_BACKENDS": json.dumps(backends), "JUPYTER_CODESTRAL_ROUTES": json.dumps(routes)}
    flags = [f"--CodestralExtension.{name}={value}"
             for name, value in (("prefix_tokens", args.prefix_tokens), ("suffix_tokens", args.suffix_tokens)) if value]
    with jupyter_server(*flags, env=env) as (base, headers, _proc), httpx.Client(headers=headers, timeout=180) as client:
        if "embedded" in backends:
            # The embedded model loads when first needed where it only stands in: load it before timing.
            wait_embedded(client, base)
        url = f"{base}/complete"
        work = [(kind, case) for kind in KINDS for case in cases[kind]]
        for kind, case in tqdm(work, desc=name, unit="case"):
            body = request_for(case, kind, args.max_tokens)
            try:
                first_ms, done = timed_stream(client, url, body)
                warm_ms, _ = timed_stream(client, url, body)
            except RuntimeError as error:
                results.outcomes.append(Outcome(kind, float("nan"), float("nan"), False, 0.0, None, str(error)[:120]))
                continue
            exact, similarity = score(done.get("completion", ""), target_for(case, kind))
            results.outcomes.append(Outcome(kind, first_ms, warm_ms, exact, similarity, done.get("backend")))
        results.usage = client.get(f"{base}/status").json()["usage"]
    return results


def wait_embedded(client: httpx.Client, base: str) -> None:
    """Start the embedded model (a first request does, where it is a fallback) and wait for it."""
    warm = {"cells": [{"cell_type": "code", "source": "x = 1\n"}], "cell_index": 0, "cursor": 6, "path": "warm.py",
            "prefetch": True}
    client.post(f"{base}/complete", json=warm)
    deadline = time.monotonic() + 300
    while True:
        status = client.get(f"{base}/status").json()
        states = {n: b.get("state") for n, b in (status.get("backends") or {}).items()}
        if states.get("embedded", status.get("state")) == "ready":
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the embedded model did not load: {states}")
        time.sleep(0.3)


def row(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o for o in outcomes if o.error is None]
    firsts = sorted(o.first_ms for o in ok)
    warms = sorted(o.warm_ms for o in ok)
    answered: dict[str, int] = {}
    for o in ok:
        answered[o.backend or "?"] = answered.get(o.backend or "?", 0) + 1
    return {
        "n": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "exact": sum(o.exact for o in ok) / max(1, len(outcomes)),
        "similarity": sum(o.similarity for o in ok) / max(1, len(outcomes)),
        "first_p50": median(firsts) if firsts else float("nan"),
        "first_p95": percentile(firsts, 0.95) if firsts else float("nan"),
        "warm_p50": median(warms) if warms else float("nan"),
        "warm_p95": percentile(warms, 0.95) if warms else float("nan"),
        "answered": answered,
    }


def report(all_results: dict[str, Results], args: argparse.Namespace) -> str:
    lines = [
        f"routing benchmark: {args.cases} masked lines x 2 kinds (block, line) from {args.notebooks.name}, seed "
        f"{args.seed}; prefix {args.prefix_tokens or 'default'} / suffix {args.suffix_tokens or 'default'} tokens, "
        f"max_tokens "
        f"{args.max_tokens}; hedge_ms {args.hedge_ms:g}; first text in ms, cold (the prompt read) and warm (the same "
        "request again)",
        "",
        f"{'config':<9} {'kind':<6} {'n':>3} {'err':>3} {'exact':>6} {'edit sim':>8} {'cold p50':>8} "
        f"{'p95':>6} {'warm p50':>8} {'p95':>6}  answered by",
    ]
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name, results in all_results.items():
        table[name] = {}
        for kind in (*KINDS, None):
            r = row(results.of(kind))
            table[name][kind or "all"] = r
            answered = ", ".join(f"{b} {n}" for b, n in sorted(r["answered"].items()))
            lines.append(
                f"{name:<9} {kind or 'all':<6} {r['n']:>3} {r['errors']:>3} {r['exact']:>6.2f} {r['similarity']:>8.3f} "
                f"{r['first_p50']:>8.0f} {r['first_p95']:>6.0f} {r['warm_p50']:>8.0f} {r['warm_p95']:>6.0f}  {answered}"
            )
        usage = results.usage.get("backends", {})
        spent = "; ".join(
            f"{b}: {u['requests']} requests, {u['prompt_tokens']:,} prompt + {u['completion_tokens']:,} completion "
            f"tokens ({u['cancelled']} cancelled{', estimated' if u['estimated'] else ''})"
            for b, u in usage.items()
        )
        lines.append(f"{'':<9} usage  {spent}")
    lines.append("")
    lines += goals(table, all_results)
    return "\n".join(lines)


def goals(table: dict[str, dict[str, dict[str, Any]]], results: dict[str, Results]) -> list[str]:
    out = []
    if {"strong", "routed", "embedded"} <= table.keys():
        block = table["routed"]["block"]["similarity"] / max(1e-9, table["strong"]["block"]["similarity"])
        out.append(f"goal: routed block edit similarity >= 95% of strong's: {block:.0%} "
                   f"({'met' if block >= 0.95 else 'NOT met'})")
        for key, warm in (("first_p50", False), ("warm_p50", True)):
            line = table["routed"]["line"][key] / table["embedded"]["line"][key] - 1
            paired = paired_ms(results["embedded"], results["routed"], "line", warm)
            out.append(f"goal: routed line first-text p50 within 10% of embedded's ({'warm' if warm else 'cold'}): "
                       f"{line:+.0%}, paired difference {paired:+.0f} ms ({'met' if line <= 0.10 else 'NOT met'})")
    if {"outage", "embedded"} <= table.keys():
        errors = table["outage"]["all"]["errors"]
        for key, warm in (("first_p50", False), ("warm_p50", True)):
            extra = table["outage"]["all"][key] - table["embedded"]["all"][key]
            paired = paired_ms(results["embedded"], results["outage"], None, warm)
            out.append(f"goal: first backend down ({'warm' if warm else 'cold'}): {errors} errors (0 wanted), "
                       f"first-text p50 {extra:+.0f} ms vs the fallback alone, paired difference {paired:+.0f} ms "
                       f"(<= +50 wanted): {'met' if errors == 0 and extra <= 50 else 'NOT met'}")
    if {"hedged", "routed"} <= table.keys():
        h, r = table["hedged"]["block"], table["routed"]["block"]
        paired = paired_ms(results["routed"], results["hedged"], "block")
        out.append(f"hedging (block): first-text p50 {r['first_p50']:.0f} -> {h['first_p50']:.0f} ms (paired "
                   f"{paired:+.0f} ms), p95 {r['first_p95']:.0f} -> {h['first_p95']:.0f} ms, edit similarity "
                   f"{r['similarity']:.3f} -> {h['similarity']:.3f}; answered by {h['answered']}")
    return out


def interleaved(cases: list[Case]) -> list[Case]:
    """Consecutive cases from different notebooks, mostly."""
    ordered = sorted(cases, key=lambda c: (c.notebook, c.cell_index, c.line_index))
    return ordered[::2] + ordered[1::2]


def paired_ms(a: Results, b: Results, kind: str | None = None, warm: bool = False) -> float:
    """Median over the cases both answered of (b's first text - a's), cold or warm."""
    def ms(o: Outcome) -> float:
        return o.warm_ms if warm else o.first_ms

    pairs = [ms(y) - ms(x) for x, y in zip(a.of(kind), b.of(kind), strict=True)
             if x.error is None and y.error is None]
    return median(pairs) if pairs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--cases", type=int, default=12, help="masked lines (each asked as a line and a block case)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--configs", default="embedded,strong,routed,outage,hedged")
    parser.add_argument("--prefix-tokens", type=int, default=0, help="context budget (default: the extension's)")
    parser.add_argument("--suffix-tokens", type=int, default=0, help="context budget (default: the extension's)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hedge-ms", type=float, default=1000.0)
    parser.add_argument("--threads", type=int, default=2, help="llama_cpp.server's threads")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()

    picked = pick_cases(args.notebooks, 2 * args.cases, args.seed)
    cases = {"block": interleaved(picked[: args.cases]), "line": interleaved(picked[args.cases :])}
    model = ensure_model(MODELS[STRONG])
    with llama_cpp_server(model, args.threads) as strong_url:
        configs = configurations(strong_url, args.hedge_ms)
        results = {}
        for name in args.configs.split(","):
            backends, routes = configs[name]
            results[name] = run_config(name, backends, routes, cases, args)
    text = report(results, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
