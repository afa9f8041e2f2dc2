"""What the user accepts from an edit: fix, document and rewrite, scored by running the result.

Cases (a fixed seed):

- ``fix``: one-token bugs injected into functions the benchmark writes, each in a cell with its tests
  (``assert`` lines): an operator (``+``/``-``, ``<``/``<=``, ``==``/``!=``, ...), a bound or a constant
  (a number off by one), a condition (``and``/``or``), a name (another name of the function).  A mutant
  counts only when its cell then fails; the cell's error (as the kernel reports it) goes with the request,
  as the frontend sends a cell's outputs.  Repaired: the new cell runs without error and keeps every
  ``assert`` line of the original.
- ``document``: the same functions, and functions cut from the shared notebooks' code, with their
  docstrings removed.  Scored: the code byte-identical (the new cell without the docstring's lines is the
  old cell), parseable, the docstring inside the function, every parameter named in it, and for the written
  functions their tests still passing.
- ``rewrite``: instructions whose result the tests check ("use a list comprehension", "rename x to
  total", ...): the tests pass and the asked-for shape is there.

Each case is one ``POST codestral/edit`` on a real Jupyter server, streamed as the frontend reads it:
time to the first text and to the end are measured at the client.  Each model runs on its own server, one
after the other, on the same cases.

    pip install ".[strong]"     # for the 1.5B
    python benchmarks/edits.py [--models 0.5b,1.5b] [--fix 24] [--document 16]
"""

from __future__ import annotations

import argparse
import ast
import builtins
import io
import json
import keyword
import random
import re
import signal
import threading
import time
import tokenize
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import BENCH_NOTEBOOKS, jupyter_server, load_cells, summary, wait_model_ready
from tqdm import tqdm

MODELS = {"0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m", "1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m"}

# Functions with their tests: the fix and rewrite cases' ground truth.  Each is a (code, tests) pair.
FUNCTIONS: list[tuple[str, str]] = [
    ('def clip(values, low, high):\n'
     '    """Each value held between low and high."""\n'
     '    out = []\n'
     '    for v in values:\n'
     '        if v < low:\n'
     '            out.append(low)\n'
     '        elif v > high:\n'
     '            out.append(high)\n'
     '        else:\n'
     '            out.append(v)\n'
     '    return out\n',
     'assert clip([1, 5, 9], 2, 8) == [2, 5, 8]\nassert clip([2, 8], 2, 8) == [2, 8]\n'),
    ('def moving_average(xs, window):\n'
     '    """The mean of each run of `window` values."""\n'
     '    means = []\n'
     '    for i in range(len(xs) - window + 1):\n'
     '        chunk = xs[i:i + window]\n'
     '        means.append(sum(chunk) / window)\n'
     '    return means\n',
     'assert moving_average([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]\nassert moving_average([2, 4], 2) == [3.0]\n'),
    ('def zscores(values):\n'
     '    """How many standard deviations each value is from the mean."""\n'
     '    n = len(values)\n'
     '    mean = sum(values) / n\n'
     '    var = sum((v - mean) ** 2 for v in values) / n\n'
     '    std = var ** 0.5\n'
     '    return [(v - mean) / std for v in values]\n',
     'assert zscores([1, 3]) == [-1.0, 1.0]\nassert zscores([2, 4, 6])[1] == 0.0\n'),
    ('def count_words(text):\n'
     '    """How often each lower-cased word occurs."""\n'
     '    counts = {}\n'
     '    for word in text.lower().split():\n'
     '        counts[word] = counts.get(word, 0) + 1\n'
     '    return counts\n',
     'assert count_words("a b A") == {"a": 2, "b": 1}\nassert count_words("") == {}\n'),
    ('def train_test_split_index(n, test_ratio):\n'
     '    """How many of n rows go to training when test_ratio of them are held out."""\n'
     '    n_test = int(n * test_ratio)\n'
     '    n_train = n - n_test\n'
     '    return n_train\n',
     'assert train_test_split_index(100, 0.2) == 80\nassert train_test_split_index(10, 0.5) == 5\n'),
    ('def accuracy(y_true, y_pred):\n'
     '    """The share of predictions equal to the truth."""\n'
     '    correct = 0\n'
     '    for t, p in zip(y_true, y_pred):\n'
     '        if t == p:\n'
     '            correct += 1\n'
     '    return correct / len(y_true)\n',
     'assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5\nassert accuracy([0], [0]) == 1.0\n'),
    ('def in_range(x, low, high):\n'
     '    """Whether x lies in [low, high)."""\n'
     '    return x >= low and x < high\n',
     'assert in_range(3, 1, 5)\nassert not in_range(5, 1, 5)\nassert in_range(1, 1, 5)\n'),
    ('def normalize(values):\n'
     '    """Values scaled to [0, 1] by their minimum and maximum."""\n'
     '    low = min(values)\n'
     '    high = max(values)\n'
     '    span = high - low\n'
     '    return [(v - low) / span for v in values]\n',
     'assert normalize([2, 4, 6]) == [0.0, 0.5, 1.0]\nassert normalize([5, 0]) == [1.0, 0.0]\n'),
    ('def squares_of_evens(numbers):\n'
     '    """The squares of the even numbers, in order."""\n'
     '    result = []\n'
     '    for n in numbers:\n'
     '        if n % 2 == 0:\n'
     '            result.append(n * n)\n'
     '    return result\n',
     'assert squares_of_evens([1, 2, 3, 4]) == [4, 16]\nassert squares_of_evens([3]) == []\n'),
    ('def top_k(scores, k):\n'
     '    """The k largest scores, largest first."""\n'
     '    ranked = sorted(scores, reverse=True)\n'
     '    return ranked[:k]\n',
     'assert top_k([3, 1, 4, 1, 5], 2) == [5, 4]\nassert top_k([1], 3) == [1]\n'),
    ('def bucket(age):\n'
     '    """An age group: child under 13, teen under 20, adult otherwise."""\n'
     '    if age < 13:\n'
     '        return "child"\n'
     '    if age < 20:\n'
     '        return "teen"\n'
     '    return "adult"\n',
     'assert bucket(12) == "child"\nassert bucket(13) == "teen"\nassert bucket(19) == "teen"\n'
     'assert bucket(20) == "adult"\n'),
    ('def total_price(prices, quantities, discount):\n'
     '    """The order\'s total with a discount given as a share (0.1 is 10%)."""\n'
     '    total = 0\n'
     '    for price, qty in zip(prices, quantities):\n'
     '        total += price * qty\n'
     '    return total * (1 - discount)\n',
     'assert total_price([10, 5], [1, 2], 0.5) == 10.0\nassert total_price([3], [3], 0) == 9\n'),
]

def renamed(tree: ast.AST, old: str, new: str) -> bool:
    """Whether the code's variables and parameters name ``new`` and no longer ``old``."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    return new in names and old not in names


# (function index, instruction, a check of the result's shape on its syntax tree and text)
REWRITES: list[tuple[int, str, Callable[[ast.AST, str], bool]]] = [
    (8, "use a list comprehension", lambda tree, _: any(isinstance(n, ast.ListComp) for n in ast.walk(tree))),
    (0, "use a list comprehension with min and max",
     lambda tree, _: any(isinstance(n, ast.ListComp) for n in ast.walk(tree))),
    (5, "rename correct to hits", lambda tree, _: renamed(tree, "correct", "hits")),
    (3, "use collections.Counter", lambda _, text: "Counter" in text),
    (11, "rename total to amount", lambda tree, _: renamed(tree, "total", "amount")),
    (6, "use a chained comparison", lambda tree, _: any(isinstance(n, ast.Compare) and len(n.ops) == 2
                                                        for n in ast.walk(tree))),
    (1, "use a list comprehension", lambda tree, _: any(isinstance(n, ast.ListComp) for n in ast.walk(tree))),
    (4, "rename n_test to held_out", lambda tree, _: renamed(tree, "n_test", "held_out")),
]

SWAPS = {"+": "-", "-": "+", "*": "/", "/": "*", "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=",
         "!=": "==", "and": "or", "or": "and", "+=": "-="}
CONTEXT = [
    {"cell_type": "markdown", "source": "# Helpers\nSmall functions used in the analysis below."},
    {"cell_type": "code", "source": "import math\nimport statistics"},
]


@dataclass
class Case:
    kind: str
    name: str
    cell: str  # what the cell holds when the edit is asked
    original: str  # the cell before the bug or with its docstring
    tests: str = ""
    instruction: str = ""
    error: dict[str, Any] | None = None
    check: Callable[[ast.AST, str], bool] | None = None
    context: list[dict[str, Any]] = field(default_factory=lambda: list(CONTEXT))

    def body(self) -> dict[str, Any]:
        outputs = [self.error] if self.error else []
        cells = [*self.context, {"cell_type": "code", "source": self.cell, "outputs": outputs}]
        body: dict[str, Any] = {"cells": cells, "cell_index": len(cells) - 1, "kind": self.kind, "stream": True,
                                "path": "edits-bench.ipynb"}
        return body | ({"instruction": self.instruction} if self.instruction else {})


def run_error(source: str) -> dict[str, Any] | None:
    """The cell's error output as the kernel reports it, or None when it runs."""
    def overrun(*_: object) -> None:
        raise TimeoutError("the cell ran for over a second")  # a bug may loop forever (appending to what it walks)

    signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        exec(compile(source, "<cell>", "exec"), {})
    except Exception as error:  # noqa: BLE001 - any failure of the cell is its error output
        return {"output_type": "error", "ename": type(error).__name__, "evalue": str(error),
                "traceback": ipython_traceback(error, source)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return None


def ipython_traceback(error: BaseException, source: str) -> list[str]:
    """The traceback as IPython shows it in a cell's output: each of the cell's frames with its line and the
    two before it ("Cell In[1], line 10", "---> 10 assert ..."), the error last; the benchmark's frames left out."""
    lines = source.splitlines()
    out = [f"{type(error).__name__}                            Traceback (most recent call last)"]
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename != "<cell>" or frame.lineno is None:
            continue
        where = f"Cell In[1], line {frame.lineno}" + (f", in {frame.name}()" if frame.name != "<module>" else "")
        shown = [f"{'---> ' if n == frame.lineno else '     '}{n:>2} {lines[n - 1]}"
                 for n in range(max(1, frame.lineno - 2), frame.lineno + 1)]
        out.append("\n".join([where, *shown]))
    out.append(f"{type(error).__name__}: {error}")
    return out


def mutants(code: str) -> list[tuple[str, str]]:
    """One-token bugs of ``code``'s body: (what changed, the mutated code)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    names = sorted({t.string for t in tokens if t.type == tokenize.NAME})
    lines = code.splitlines(keepends=True)
    out: list[tuple[str, str]] = []

    def replaced(tok: tokenize.TokenInfo, new: str) -> str:
        (row, col), (_, end) = tok.start, tok.end
        changed = list(lines)
        changed[row - 1] = changed[row - 1][:col] + new + changed[row - 1][end:]
        return "".join(changed)

    for tok in tokens:
        if tok.start[0] == 1 or tok.line.strip().startswith('"""'):
            continue  # the signature and the docstring stay
        if tok.string in SWAPS and tok.type in (tokenize.OP, tokenize.NAME):
            out.append((f"operator {tok.string} -> {SWAPS[tok.string]}", replaced(tok, SWAPS[tok.string])))
        elif tok.type == tokenize.NUMBER and tok.string.isdigit():
            out.append((f"constant {tok.string} -> {int(tok.string) + 1}", replaced(tok, str(int(tok.string) + 1))))
    local = [n for n in names if not keyword.iskeyword(n) and n not in dir(builtins)]
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[0] > 1 and tok.string in local:
            others = [n for n in local if n != tok.string]
            if others:
                new = others[(tok.start[0] * 7 + tok.start[1]) % len(others)]
                out.append((f"name {tok.string} -> {new}", replaced(tok, new)))
    return out


def docstring_removed(code: str) -> str | None:
    """``code`` (one function) without its docstring's lines, or None when it has none."""
    tree = ast.parse(code)
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef) or ast.get_docstring(func) is None:
        return None
    doc = func.body[0]
    lines = code.splitlines(keepends=True)
    assert doc.end_lineno is not None
    return "".join(lines[: doc.lineno - 1] + lines[doc.end_lineno:])


def notebook_functions(folder: Path) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Top-level functions of 3 to 25 lines in the notebooks' code cells: (name, code without its docstring,
    the two cells before the cell as context)."""
    found = []
    for notebook in load_cells(folder):
        for index, cell in enumerate(notebook):
            if cell["cell_type"] != "code" or cell["source"].lstrip().startswith(("%", "!")):
                continue
            try:
                tree = ast.parse(cell["source"])
            except SyntaxError:
                continue
            lines = cell["source"].splitlines(keepends=True)
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and not node.decorator_list and node.end_lineno \
                        and 3 <= node.end_lineno - node.lineno + 1 <= 25 and node.col_offset == 0:
                    code = "".join(lines[node.lineno - 1: node.end_lineno])
                    code = code if code.endswith("\n") else code + "\n"
                    bare = docstring_removed(code) or code
                    context = [c for c in notebook[max(0, index - 2): index]]
                    found.append((node.name, bare, context))
    return found


def make_cases(n_fix: int, n_document: int, seed: int, folder: Path) -> list[Case]:
    rng = random.Random(seed)
    fixes = []
    for code, tests in FUNCTIONS:
        assert run_error(code + "\n\n" + tests) is None, code
        name = code.split("(")[0][4:]
        for what, bug in mutants(code):
            cell = bug + "\n\n" + tests
            try:
                ast.parse(cell)
            except SyntaxError:
                continue
            error = run_error(cell)
            if error is not None:
                fixes.append(Case("fix", f"{name}: {what}", cell, code + "\n\n" + tests, tests, error=error))
    # One of each bug class first, then the rest at random, so every class is in a small sample.
    rng.shuffle(fixes)
    by_class: dict[str, list[Case]] = {}
    for case in fixes:
        by_class.setdefault(case.name.split(": ")[1].split()[0], []).append(case)
    picked: list[Case] = []
    while len(picked) < n_fix and any(by_class.values()):
        for group in by_class.values():
            if group and len(picked) < n_fix:
                picked.append(group.pop())
    documents = []
    for code, tests in FUNCTIONS:
        bare = docstring_removed(code)
        assert bare is not None
        documents.append(Case("document", code.split("(")[0][4:], bare, bare, tests))
    # A function several notebooks define (save_fig) counts once.
    from_notebooks = list({code: (name, code, ctx) for name, code, ctx in notebook_functions(folder)}.values())
    rng.shuffle(from_notebooks)
    written = n_document // 2
    picked_docs = documents[:written] + [Case("document", f"notebook {name}", code, code, context=ctx)
                                         for name, code, ctx in from_notebooks[: n_document - written]]
    rewrites = [Case("rewrite", f"{FUNCTIONS[i][0].split('(')[0][4:]}: {instruction}", FUNCTIONS[i][0] + "\n\n"
                     + FUNCTIONS[i][1], FUNCTIONS[i][0] + "\n\n" + FUNCTIONS[i][1], FUNCTIONS[i][1],
                     instruction=instruction, check=check) for i, instruction, check in REWRITES]
    return picked + picked_docs + rewrites


def keeps_asserts(case: Case, new: str) -> bool:
    kept = {line.strip() for line in new.splitlines()}
    return all(line.strip() in kept for line in case.tests.splitlines() if line.strip())


def without_docstring_lines(old: str, new: str) -> bool:
    """Whether ``new`` is ``old`` with lines added only (the docstring or a comment block): byte-identical code."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    i = 0
    for line in new_lines:
        if i < len(old_lines) and line == old_lines[i]:
            i += 1
    return i == len(old_lines) and len(new_lines) > len(old_lines)


def score(case: Case, new: str) -> dict[str, Any]:
    try:
        tree = ast.parse(new)
    except SyntaxError:
        return {"parses": False, "passed": False}
    result: dict[str, Any] = {"parses": True}
    if case.kind == "fix":
        result["passed"] = run_error(new) is None and keeps_asserts(case, new)
        result["unchanged"] = new == case.cell
    elif case.kind == "rewrite":
        runs = run_error(new + ("" if keeps_asserts(case, new) else "\n\n" + case.tests)) is None
        result["passed"] = runs and case.check is not None and case.check(tree, new)
        result["unchanged"] = new.strip() == case.cell.strip()
    else:
        func = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
        doc = ast.get_docstring(func) if func else None
        params = [a.arg for a in func.args.args + func.args.kwonlyargs if a.arg not in ("self", "cls")] \
            if func else []
        result["identical"] = without_docstring_lines(case.cell, new)
        result["inside"] = doc is not None
        result["params_named"] = bool(doc) and all(re.search(rf"\b{re.escape(p)}\b", doc or "") for p in params)
        result["tests"] = run_error(new + "\n\n" + case.tests) is None if case.tests else None
        result["passed"] = result["identical"] and result["inside"] and result["params_named"] \
            and result["tests"] is not False
    return result


def ask(client: httpx.Client, base: str, case: Case, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One edit as the frontend streams it: the replacement and the client's timings."""
    start = time.perf_counter()
    first: float | None = None
    done: dict[str, Any] = {}
    with client.stream("POST", f"{base}/edit", json=body or case.body(), timeout=600) as reply:
        if reply.status_code != 200:
            return {"error": f"{reply.status_code}: {reply.read().decode()[:200]}"}
        for line in reply.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event.get("delta") and first is None:
                first = time.perf_counter()
            if event.get("done"):
                done = event
            if "error" in event:
                return {"error": event["error"]}
    end = time.perf_counter()
    return {"replacement": done.get("replacement", ""), "first_ms": 1000 * ((first or end) - start),
            "total_ms": 1000 * (end - start), "server": done.get("timings", {})}


def read_ahead_then_fix(client: httpx.Client, base: str, case: Case, run: int, think_s: float) -> dict[str, Any]:
    """As the frontend does once a cell raised: the fix read ahead (``prefetch``), then, ``think_s`` later, the
    user's Fix.  A note of its own above the cells makes the prompt new to the model's cache."""
    body = case.body()
    body["cells"] = [{"cell_type": "markdown", "source": f"Run {run} of the helpers."}, *body["cells"]]
    body["cell_index"] += 1
    ahead = body | {"prefetch": True, "stream": False}
    prefetch = threading.Thread(target=lambda: client.post(f"{base}/edit", json=ahead, timeout=600))
    prefetch.start()
    time.sleep(think_s)
    answer = ask(client, base, case, body)
    prefetch.join()
    return answer


def row_of(model: str, kind: str, case: Case, answer: dict[str, Any]) -> dict[str, Any]:
    """One case's row: its scores and the client's timings."""
    new = answer.get("replacement")
    result = score(case, new) if new is not None and "error" not in answer else {"parses": False, "passed": False}
    return {"model": model, "kind": kind, "case": case.name, **result,
            **{k: v for k, v in answer.items() if k != "server"}}


def run_model(model: str, cases: list[Case], log: Any, read_ahead: bool, think_s: float) -> list[dict[str, Any]]:
    env = {"JUPYTER_CODESTRAL_BACKEND": "embedded", "JUPYTER_CODESTRAL_MODEL": MODELS[model]}
    rows = []
    with jupyter_server("--CodestralExtension.user_rate_limit=0", env=env) as (base, headers, _), \
            httpx.Client(headers=headers) as client:
        wait_model_ready(client, base, timeout=600)
        for case in tqdm(cases, desc=model, leave=False):
            rows.append(row_of(model, case.kind, case, ask(client, base, case)))
            logged(log, rows[-1], case)
        fixes = [case for case in cases if case.kind == "fix"] if read_ahead else []
        for run, case in enumerate(tqdm(fixes, desc=f"{model} fix read ahead", leave=False)):
            rows.append(row_of(model, "fix read ahead", case, read_ahead_then_fix(client, base, case, run, think_s)))
            logged(log, rows[-1], case)
    return rows


def logged(log: Any, row: dict[str, Any], case: Case) -> None:
    if log:
        log.write(json.dumps(row | {"cell": case.cell}) + "\n")
        log.flush()


def report(rows: list[dict[str, Any]], models: list[str]) -> None:
    def share(selected: list[dict[str, Any]], key: str) -> str:
        return f"{sum(1 for r in selected if r.get(key)) / len(selected):6.0%}" if selected else "     -"

    print(f"{'kind':15} {'measure':30} " + " ".join(f"{m:>16}" for m in models))
    for kind, measures in (("fix", ["passed", "unchanged"]), ("fix read ahead", ["passed"]),
                           ("document", ["passed", "identical", "inside", "params_named"]),
                           ("rewrite", ["passed", "unchanged"])):
        for measure in [*measures, "unparseable", "first text p50/p95 ms", "end p50/p95 ms"]:
            cells = []
            for model in models:
                selected = [r for r in rows if r["model"] == model and r["kind"] == kind]
                if not selected:
                    cells.append("-")
                elif measure == "unparseable":
                    cells.append(f"{sum(1 for r in selected if not r['parses']) / max(1, len(selected)):6.0%}")
                elif measure.endswith("ms"):
                    key = "first_ms" if measure.startswith("first") else "total_ms"
                    values = summary([r[key] for r in selected if key in r]) if selected else None
                    cells.append(f"{values['median']:.0f} / {values['p95']:.0f}" if values else "-")
                else:
                    cells.append(share(selected, measure))
            n = len([r for r in rows if r["model"] == models[0] and r["kind"] == kind])
            if not any(r["kind"] == kind for r in rows):
                continue
            print(f"{kind:15} {measure + (f' (n={n})' if measure == 'passed' else ''):30} "
                  + " ".join(f"{c:>16}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="0.5b,1.5b", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--fix", type=int, default=36, help="fix cases (injected bugs)")
    parser.add_argument("--document", type=int, default=16, help="document cases (half written, half notebooks)")
    parser.add_argument("--seed", type=int, default=38)
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--log", type=Path, help="write every case's answer per model here (JSON lines)")
    parser.add_argument("--read-ahead", default="0.5b", help="models whose fix cases are asked again as the frontend "
                        "does once a cell raised: read ahead, then Fix (comma-separated; empty: none)")
    parser.add_argument("--think-s", type=float, default=3.0, help="seconds between the cell raising and the Fix")
    args = parser.parse_args()
    models = args.models.split(",")
    cases = make_cases(args.fix, args.document, args.seed, args.folder)
    counts = {k: sum(1 for c in cases if c.kind == k) for k in ("fix", "document", "rewrite")}
    cell_lines = summary([c.cell.count("\n") + 1 for c in cases])
    print(f"cases: {counts}; cell lines median {cell_lines['median']:.0f}, p95 {cell_lines['p95']:.0f}; "
          f"seed {args.seed}")
    log = args.log.open("w") if args.log else None
    rows = []
    for model in models:
        rows += run_model(model, cases, log, model in args.read_ahead.split(","), args.think_s)
    report(rows, models)


if __name__ == "__main__":
    main()
