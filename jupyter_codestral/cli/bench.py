"""``jupyter codestral bench``: completion quality and latency over a folder of real notebooks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..evaluation import Case, pick_cases, score
from ..request import parse_completion_request
from ..stats import median, percentile
from ..templates import LAYOUTS
from .common import add_backend_flags, configured, final_event, running


def parse_config(text: str) -> dict[str, str]:
    """``layout=split,model=...`` → overrides for one configuration of a comparison."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    bad = [p[0] for p in pairs if len(p) != 2 or p[0] not in ("backend", "url", "model", "layout")]
    if bad:
        raise SystemExit(f"--compare takes key=value pairs of backend, url, model, layout; not {bad}")
    return {k.strip(): v.strip() for k, v in pairs}


async def bench_one(args: argparse.Namespace, overrides: dict[str, str], cases: Sequence[Case]) -> dict[str, Any]:
    assembly = configured(argparse.Namespace(**{**vars(args), **overrides}))
    who = assembly.service.completer.describe()
    first, total, exact, similarity = [], [], [], []
    async with running(assembly):
        for case in tqdm(cases, desc=f"{who['backend']} {who['layout']}", unit="case", file=sys.stderr):
            request = parse_completion_request(json.dumps(case.request(stream=False)).encode())
            event = await final_event(assembly, request)
            first.append(event["timings"]["first_token_ms"])
            total.append(event["timings"]["total_ms"])
            hit, sim = score(event["completion"], case.target)
            exact.append(hit)
            similarity.append(sim)
    return {
        "label": ", ".join(f"{k}={v}" for k, v in overrides.items()) or f"{who['backend']} (configured)",
        "first": first,
        "total": total,
        "exact": exact,
        "similarity": similarity,
    }


def p95(values: list[float]) -> float:
    return percentile(sorted(values), 0.95)


async def bench_command(args: argparse.Namespace) -> int:
    cases = pick_cases(Path(args.folder), args.cases, args.seed)
    configs = [parse_config(c) for c in args.compare] if args.compare else [{}]
    rows = [await bench_one(args, overrides, cases) for overrides in configs]
    print(f"{len(cases)} masked lines from {args.folder} (seed {args.seed})")
    print(
        f"{'configuration':<32}{'exact':>7}{'edit sim':>10}{'first ms p50':>14}{'p95':>8}{'total ms p50':>14}{'p95':>8}"
    )
    for row in rows:
        n = max(1, len(row["exact"]))
        print(
            f"{row['label'][:31]:<32}{sum(row['exact']) / n:>7.2f}{sum(row['similarity']) / n:>10.3f}"
            f"{median(row['first']):>14.0f}{p95(row['first']):>8.0f}"
            f"{median(row['total']):>14.0f}{p95(row['total']):>8.0f}"
        )
    return 0


def add_parser(verbs: Any) -> None:
    bench = verbs.add_parser(
        "bench",
        help="quality and latency over a folder of notebooks",
        description="Mask the rest of code lines in real notebooks, complete them, and report "
        "exact match, edit similarity and latency.",
    )
    bench.add_argument("folder", help="a folder of .ipynb files")
    bench.add_argument("--cases", type=int, default=20, help="how many masked lines (default 20)")
    bench.add_argument("--seed", type=int, default=7, help="case selection seed (default 7)")
    bench.add_argument(
        "--compare",
        nargs="+",
        metavar="CONFIG",
        help="configurations to run side by side on the same cases, e.g. layout=stable layout=split",
    )
    add_backend_flags(bench)
    bench.add_argument("--layout", choices=LAYOUTS, help="prompt layout")
    bench.set_defaults(run=bench_command)
