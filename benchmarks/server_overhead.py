"""The server's own cost per completion: context assembly plus relaying the stream.

Each round sends the same completion twice, interleaved: once straight to a
loopback Mistral-protocol backend (the baseline: HTTP plus the backend's own
work) and once through ``POST codestral/complete`` on a real Jupyter server
with a 200-cell notebook, which the server turns into that same kind of
request.  The overhead is the per-round difference; medians and p95 are
reported, with the server's own ``context_ms`` and, within it, the
redaction of secrets (on for this remote backend).  Each round types one
more character in the current cell, so the line at the cursor is new to the
redaction's cache every time, as while typing.

    python benchmarks/server_overhead.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import json
import time

import httpx
from _common import fake_backend, jupyter_server, load_cells, summary


def two_hundred_cells() -> list[dict[str, str]]:
    cells: list[dict[str, str]] = []
    for notebook in load_cells():
        cells.extend(c for c in notebook if c["cell_type"] != "raw")
        if len(cells) >= 200:
            break
    return cells[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    cells = two_hundred_cells()
    index = next(i for i in range(100, 200) if cells[i]["cell_type"] == "code" and cells[i]["source"])
    request = {"cells": cells, "cell_index": index, "cursor": len(cells[index]["source"]), "stream": True, "path": "bench.ipynb"}
    size_kb = len(json.dumps(request)) / 1024

    with fake_backend() as backend_url, jupyter_server(
        "--CodestralExtension.backend=mistral", f"--CodestralExtension.url={backend_url}",
        env={"CODESTRAL_API_KEY": "bench-key"},
    ) as (base, headers, _):
        with httpx.Client(headers=headers, timeout=30) as client, httpx.Client(timeout=30) as direct:
            # The baseline request carries what the server would send for this notebook.
            def via_server(typed: str = "") -> dict[str, float]:
                source = cells[index]["source"] + typed
                body = {**request, "cells": [*cells[:index], {**cells[index], "source": source}, *cells[index + 1 :]],
                        "cursor": len(source)}
                with client.stream("POST", f"{base}/complete", json=body) as response:
                    lines = [json.loads(line) for line in response.iter_lines() if line]
                assert lines[-1].get("done"), lines[-1]
                return lines[-1]["timings"]

            def straight() -> None:
                with direct.stream("POST", f"{backend_url}/v1/fim/completions", json=payload) as response:
                    for _ in response.iter_lines():
                        pass

            via_server()
            payload = {"model": "codestral-latest", "prompt": "x" * 12000, "suffix": "y" * 3000, "max_tokens": 128,
                       "temperature": 0.0, "stream": True}
            for _ in range(args.warmup):
                via_server()
                straight()
            baseline, through, overhead, context_ms, redaction_ms = [], [], [], [], []
            for n in range(args.rounds):
                t0 = time.perf_counter()
                straight()
                t1 = time.perf_counter()
                timings = via_server(" # " + "abcdefghij"[: n % 10 + 1] + str(n))
                t2 = time.perf_counter()
                baseline.append((t1 - t0) * 1000)
                through.append((t2 - t1) * 1000)
                overhead.append(((t2 - t1) - (t1 - t0)) * 1000)
                context_ms.append(timings["context_ms"])
                redaction_ms.append(timings["redaction_ms"])

    print(f"200-cell notebook, request body {size_kb:.0f} KiB, {args.rounds} rounds (after {args.warmup} warm-up)")
    print(f"{'measure':<38}{'median ms':>10}{'p95 ms':>10}")
    for name, values in (
        ("direct to backend (baseline)", baseline),
        ("through codestral/complete", through),
        ("server overhead (per-round difference)", overhead),
        ("  of which context assembly", context_ms),
        ("    of which redaction of secrets", redaction_ms),
    ):
        s = summary(values)
        print(f"{name:<38}{s['median']:>10.2f}{s['p95']:>10.2f}")
    verdict = "meets" if summary(overhead)["median"] < 5 else "MISSES"
    print(f"goal: median overhead under 5 ms: {verdict}")
    verdict = "meets" if summary(redaction_ms)["median"] < 1 else "MISSES"
    print(f"goal: median redaction under 1 ms: {verdict}")


if __name__ == "__main__":
    main()
