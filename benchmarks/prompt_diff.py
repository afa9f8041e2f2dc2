"""Where the prompts of two revisions differ, on the typing replay's quality probes (no model needed).

Each revision's own code builds the split-layout prompt of every case's last request (its
context assembly, with the budget given for it), in a process of its own; the prompts are
then compared: how many are the same, and for the others, whether they differ only in where
the earlier cells begin (one change at the start of the notebook file) or elsewhere.

    python benchmarks/prompt_diff.py --before 24e9faa^ --before-budget 1024,256 [--budget 1536,512]
                                     [--before-window nearest] [--cases 100]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import BENCH_NOTEBOOKS, source_tree

RENDER = """
import json, sys
from pathlib import Path
from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.evaluation import pick_cases
from jupyter_codestral.request import parse_completion_request
from jupyter_codestral.templates import TEMPLATES, render_prompt
folder, count, prefix, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
budget = ContextBudget(prefix_tokens=prefix, suffix_tokens=384, trim_step_tokens=step, **json.loads(sys.argv[5]))
prompts = []
for case in pick_cases(Path(folder), count, 7):
    request = parse_completion_request(json.dumps(case.request()).encode())
    prompts.append(render_prompt(TEMPLATES["qwen"], build_context(request, budget), "split"))
print(json.dumps(prompts))
"""


def prompts(revision: str | None, budget: str, folder: Path, cases: int, window: str | None = None) -> list[str]:
    prefix, step = budget.split(",")
    extra = json.dumps({"window": window} if window else {})
    with source_tree(revision) as env:
        out = subprocess.run([sys.executable, "-c", RENDER, str(folder), str(cases), prefix, step, extra],
                             env={**os.environ, **env}, check=True, capture_output=True, text=True,
                             cwd="/").stdout  # not the repository: "-c" would import its code first
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--before-budget", default="1024,256", help="its prefix tokens and window step")
    parser.add_argument("--budget", default="1536,512", help="this code's prefix tokens and window step")
    parser.add_argument("--before-window", help="the revision's window, where it has windows")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    args = parser.parse_args()
    old = prompts(args.before, args.before_budget, args.folder, args.cases, args.before_window)
    new = prompts(None, args.budget, args.folder, args.cases)
    same = start_only = 0
    for a, b in zip(old, new, strict=True):
        if a == b:
            same += 1
            continue
        changes = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"]
        start = a.index("<|fim_prefix|>") + len("<|fim_prefix|>")
        start_only += len(changes) == 1 and changes[0][1] == start
    before_window = f", window {args.before_window}" if args.before_window else ""
    print(f"{len(old)} quality probes of the typing replay, split layout: {args.before} (budget {args.before_budget}"
          f"{before_window}) "
          f"against this code (budget {args.budget})")
    print(f"the same prompt: {same}; differing only in where the earlier cells begin: {start_only}; "
          f"differing elsewhere: {len(old) - same - start_only}")
    print(f"mean prompt length in characters: {sum(map(len, old)) / len(old):.0f} against "
          f"{sum(map(len, new)) / len(new):.0f}")


if __name__ == "__main__":
    main()
