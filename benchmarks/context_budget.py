"""What the context budget costs and what it buys, on the embedded model.

The same masked-line cases as ``typing_replay.py`` are completed once each
(a cold request: the whole prompt is read) with several prefix budgets
(the suffix budget is a quarter of it).  For each budget: prompt size, cold
time to first token, exact match and edit similarity of the first line.

    python benchmarks/context_budget.py [--budgets 128,512,1024,2048] [--cases 12]
"""

from __future__ import annotations

import argparse

import httpx
from _common import BENCH_NOTEBOOKS, jupyter_server, summary, wait_model_ready
from tqdm import tqdm
from typing_replay import timed_completion_with_timings

from jupyter_codestral.evaluation import pick_cases, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="128,512,1024,2048")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    cases = pick_cases(BENCH_NOTEBOOKS, args.cases, args.seed)
    rows = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        flags = ["--CodestralExtension.backend=local", f"--CodestralExtension.prefix_tokens={budget}",
                 f"--CodestralExtension.suffix_tokens={max(32, budget // 4)}", "--CodestralExtension.kv_cache=False"]
        ttft, tokens, exact, similarity = [], [], [], []
        with jupyter_server(*flags) as (base, headers, _), httpx.Client(headers=headers, timeout=180) as client:
            wait_model_ready(client, base)
            for case in tqdm(cases, desc=f"budget {budget}", unit="case"):
                body = case.request()
                ms, completion, timings = timed_completion_with_timings(client, f"{base}/complete", body)
                tokens.append(timings["prompt_tokens_estimate"])
                hit, sim = score(completion, case.target)
                ttft.append(ms)
                exact.append(hit)
                similarity.append(sim)
        rows.append((budget, summary(tokens)["median"], summary(ttft), sum(exact) / len(exact),
                     sum(similarity) / len(similarity)))

    print(f"\n{len(cases)} cases (seed {args.seed}); one cold request each (no cache reuse); embedded model")
    print(f"{'prefix budget':>13}{'prompt tokens':>15}{'cold TTFT med':>15}{'p95':>8}{'exact':>7}{'edit sim':>10}")
    for budget, tok, t, ex, sim in rows:
        print(f"{budget:>13}{tok:>15.0f}{t['median']:>15.0f}{t['p95']:>8.0f}{ex:>7.2f}{sim:>10.3f}")


if __name__ == "__main__":
    main()
