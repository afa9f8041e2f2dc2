"""Which prompt layout gives the embedded model its best completions (quality only, no timing).

The same cases are completed with each layout, straight on the model (llama.cpp, no server), each
prompt read from scratch:

- ``inline``: earlier cells, then the FIM suffix holding the rest of the cell and the later cells;
- ``split``: later cells (and the rest of the cell) as a file of their own before the notebook;
- ``stable``: the notebook up to the cursor, the rest of the cursor's line; no later cells;
- ``later-before``: like ``stable``, with the later cells put just before the current cell (where
  they would not spoil a cache of the earlier ones), to see what the model makes of it;
- ``richer``: ``split`` with the richer prompt's budget (``ContextBudget.richer``: a step more of
  earlier cells and a third more of the cells below), as the embedded model's adaptive layout reads it.

Cases from the benchmark notebooks, each a line typed up to a third of its length (the rest is the
target): ``mid-cell`` (the typing benchmark's masked lines), ``new cell`` (the first line of a new
last cell) and ``earlier cell`` (the first line of a cell of the full notebook, the rest of the cell
below it).

    python benchmarks/layout_quality.py [--cases 30] [--kinds mid-cell] [--layouts split,richer,stable]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from _common import BENCH_NOTEBOOKS
from tqdm import tqdm

from jupyter_codestral.context import ContextBudget, FimContext, build_context
from jupyter_codestral.embedded.model_files import BUNDLED, ensure_model
from jupyter_codestral.evaluation import pick_cases, read_cells, score
from jupyter_codestral.request import parse_completion_request
from jupyter_codestral.templates import TEMPLATES, render_prompt, split_layout_parts, stable_suffix

QWEN = TEMPLATES["qwen"]
BUDGET = ContextBudget(prefix_tokens=1536, suffix_tokens=384, trim_step_tokens=512)


def prompts(context: FimContext) -> dict[str, str]:
    _, _, later = split_layout_parts(context)
    moved = (later.strip() + "\n\n") if later.strip() else ""
    commented = "".join(f"# | {line}\n" for line in later.strip().split("\n")) if later.strip() else ""
    below = f"# The cells below the next one (for reference):\n{commented}\n" if commented else ""
    quoted = f'"""The code below the next cell:\n{later.strip()}\n"""\n\n' if later.strip() else ""
    return {
        "inline": render_prompt(QWEN, context, "inline"),
        "split": render_prompt(QWEN, context, "split"),
        "stable": render_prompt(QWEN, context, "stable"),
        "later-before": QWEN.fim(context.namespace + context.before + moved + context.header + context.cell_prefix,
                                 stable_suffix(context)),
        "later-commented": QWEN.fim(context.namespace + context.before + below + context.header + context.cell_prefix,
                                    stable_suffix(context)),
        "later-quoted": QWEN.fim(context.namespace + context.before + quoted + context.header + context.cell_prefix,
                                 stable_suffix(context)),
    }


Case = tuple[list[dict[str, str]], int, int, str]  # cells, cell index, cursor, target


def first_line_cases(folder: Path, count: int, new_cell: bool, seed: int = 11) -> list[Case]:
    rng = random.Random(seed)
    found = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = read_cells(path)
        for index, cell in enumerate(cells):
            first = cell["source"].split("\n")[0]
            if (cell["cell_type"] == "code" and index >= 3 and 16 <= len(first) <= 90 and first == first.strip()
                    and not first.startswith(("#", "!", "%"))):
                found.append((cells, index, first))
    cases = []
    for cells, index, first in rng.sample(found, min(count, len(found))):
        typed = first[: max(4, len(first) // 3)]
        if new_cell:
            notebook = [dict(c) for c in cells[:index]] + [{"cell_type": "code", "source": typed}]
        else:
            notebook = [dict(c) for c in cells]
            rest = cells[index]["source"].split("\n", 1)
            notebook[index]["source"] = typed + ("\n" + rest[1] if len(rest) > 1 else "")
        cases.append((notebook, index, len(typed), first[len(typed) :].strip()))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=30, help="cases of each kind")
    parser.add_argument("--notebooks", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--kinds", default="mid-cell,new cell,earlier cell")
    parser.add_argument("--layouts", help="only these layouts (comma-separated; default: all)")
    parser.add_argument("--n-batch", type=int, default=256, help="llama.cpp batch size (the worker reads in 64)")
    args = parser.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(ensure_model(BUNDLED)), n_ctx=4096, n_batch=args.n_batch, verbose=False)
    stops = {llm.token_eos()} | {llm.tokenize(s.encode(), add_bos=False, special=True)[0] for s in QWEN.stop}

    def complete(prompt: str) -> str:
        out = b""
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        for n, token in enumerate(llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0)):
            if token in stops or n >= 48 or b"\n" in out:
                break
            out += llm.detokenize([token])
        return out.decode("utf-8", "replace")

    wanted = args.kinds.split(",")
    kinds: dict[str, list[Case]] = {}
    if "mid-cell" in wanted:
        kinds["mid-cell"] = [(c.request()["cells"], c.cell_index, c.request()["cursor"], c.target)
                             for c in pick_cases(args.notebooks, args.cases)]
    if "new cell" in wanted:
        kinds["new cell"] = first_line_cases(args.notebooks, args.cases, new_cell=True)
    if "earlier cell" in wanted:
        kinds["earlier cell"] = first_line_cases(args.notebooks, args.cases, new_cell=False)
    rows: dict[tuple[str, str], list[tuple[bool, float]]] = {}
    started = time.perf_counter()
    for kind, cases in kinds.items():
        for cells, index, cursor, target in tqdm(cases, desc=kind, unit="case"):
            request = parse_completion_request(json.dumps({"cells": cells, "cell_index": index, "cursor": cursor}).encode())
            laid_out = prompts(build_context(request, BUDGET))
            laid_out["richer"] = render_prompt(QWEN, build_context(request, BUDGET.richer), "split")
            for layout, prompt in laid_out.items():
                if args.layouts is None or layout in args.layouts.split(","):
                    rows.setdefault((kind, layout), []).append(score(complete(prompt), target))

    print(f"\n{args.cases} cases of each kind; embedded model, each prompt read from scratch "
          f"({time.perf_counter() - started:.0f} s); exact match / edit similarity of the first line")
    layouts = list(next(iter(rows.values())) and dict.fromkeys(layout for _, layout in rows))
    print(f"{'cases':<14}" + "".join(f"{name:>20}" for name in layouts))
    for kind in kinds:
        cells = []
        for layout in layouts:
            scores = rows[(kind, layout)]
            cells.append(f"{sum(s[0] for s in scores) / len(scores):.2f} / {sum(s[1] for s in scores) / len(scores):.3f}")
        print(f"{kind:<14}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
