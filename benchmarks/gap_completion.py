"""What the user gets when Tab accepts the whole suggestion: gaps cut from real cells, filled by the embedded model.

Cases, from code cells of the benchmark notebooks chosen with a fixed seed (each cell gives one of each):

- ``line``: one line in the middle of the cell removed; the cursor on the empty line where it was (after
  its indentation, as an editor's auto-indent puts it), the rest of the cell and the notebook below;
- ``lines``: a run of 2 to 5 lines in the middle removed, the same way;
- ``last``: the cell's last line removed; the cursor on a new last line;
- ``cell``: the whole cell removed: a new cell after the cells above, none below.

Each case is asked through ``POST codestral/complete`` as the frontend asks (after a prefetch of the same
place, as on entering the cell), and the suggestion is accepted whole: the cell then is compared with the
original: exact (the gap's text, lines stripped of trailing blanks), edit similarity of the inserted text,
and whether the cell still parses (IPython magics aside).  The first line of the same suggestions is
scored too, as the older benchmarks did.  The share of suggestions each rule cut is counted (the reply's
``cut``), and, from each suggestion's mean token log-probability (``confidence``), the precision of what
a threshold would show against the share of gaps that get a suggestion.

Configurations run one after another, each on a server of its own: ``before`` is the code of
``--before`` (a git revision), ``now`` the working tree.

    python benchmarks/gap_completion.py [--cells 60] [--configs before,now]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import BENCH_NOTEBOOKS, jupyter_server, source_tree, wait_model_ready
from tqdm import tqdm

from jupyter_codestral.evaluation import edit_similarity, read_cells

KINDS = ("line", "lines", "last", "cell")
# The code at the start of this work: "today's" in the issue that asked for this benchmark.
DEFAULT_BEFORE = "168c9a7"


@dataclass
class Case:
    kind: str
    notebook: str
    cell: int
    cells: list[dict[str, Any]]  # the notebook as the user has it, the gap cut
    cursor: int
    target: str  # what was cut (without the indentation the cursor is after)
    original: str  # the cell as it was
    head: str  # the cell's text before the cursor
    tail: str  # after it

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"cells": self.cells, "cell_index": self.cell, "cursor": self.cursor, "path": self.notebook,
                "language": "python", "max_tokens": 128, **extra}

    def accepted(self, completion: str) -> str:
        return self.head + completion + self.tail


@dataclass
class Outcome:
    case: Case
    completion: str
    confidence: float | None
    cut: str | None

    @property
    def exact(self) -> bool:
        return _norm(self.case.accepted(self.completion)) == _norm(self.case.original)

    @property
    def similarity(self) -> float:
        return edit_similarity(self.completion.strip(), self.case.target.strip())

    @property
    def parses(self) -> bool:
        return parses(self.case.accepted(self.completion))

    @property
    def first_line(self) -> str:
        return self.completion.split("\n", 1)[0]

    @property
    def first_exact(self) -> bool:
        return self.first_line.strip() == self.case.target.split("\n", 1)[0].strip()

    @property
    def first_similarity(self) -> float:
        return edit_similarity(self.first_line.strip(), self.case.target.split("\n", 1)[0].strip())

    @property
    def first_parses(self) -> bool:
        return parses(self.case.accepted(self.first_line))


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    errors: int = 0


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def parses(source: str) -> bool:
    """Whether a cell is valid Python, IPython magics and shell lines aside."""
    lines = ["pass" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    try:
        ast.parse("\n".join(lines))
    except SyntaxError:
        return False
    return True


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def make_cases(folder: Path, count: int, seed: int) -> list[Case]:
    """``count`` cells (each giving a case of each kind where it can), drawn with ``seed`` from every notebook."""
    rng = random.Random(seed)
    candidates = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = read_cells(path)
        for index, cell in enumerate(cells):
            source = cell["source"].rstrip("\n")
            lines = source.split("\n")
            if (cell["cell_type"] == "code" and index >= 3 and len(lines) >= 4 and not source.lstrip().startswith("%%")
                    and parses(source)):
                candidates.append((path.name, cells, index, lines))
    cases = []
    for name, cells, index, lines in rng.sample(candidates, min(count, len(candidates))):
        original = "\n".join(lines)
        middle = [i for i in range(1, len(lines) - 1) if len(lines[i].strip()) >= 8 and not lines[i].strip().startswith("#")]
        if middle:
            i = rng.choice(middle)
            cases.append(_gap(name, cells, index, lines, original, "line", i, i + 1))
        runs = [(i, i + n) for n in range(2, 6) for i in range(1, len(lines) - n)
                if all(lines[k].strip() for k in (i, i + n - 1))]
        if runs:
            start, end = rng.choice(runs)
            cases.append(_gap(name, cells, index, lines, original, "lines", start, end))
        if lines[-1].strip():
            cases.append(_gap(name, cells, index, lines, original, "last", len(lines) - 1, len(lines)))
        empty = [*cells[:index], {"cell_type": "code", "source": ""}]
        cases.append(Case("cell", name, index, [dict(c) for c in empty], 0, original, original, "", ""))
    return cases


def _gap(name: str, cells: list[dict[str, Any]], index: int, lines: list[str], original: str, kind: str,
         start: int, end: int) -> Case:
    """Lines ``start`` to ``end`` of the cell cut: the cursor on an empty line there, after their indentation."""
    indent = _indent(lines[start])
    head = "\n".join(lines[:start]) + "\n" + indent
    tail = ("\n" + "\n".join(lines[end:])) if end < len(lines) else ""
    removed = "\n".join(lines[start:end])
    notebook = [dict(c) for c in cells]
    notebook[index] = {**notebook[index], "source": head + tail}
    return Case(kind, name, index, notebook, len(head), removed[len(indent):], original, head, tail)


def run_config(name: str, revision: str | None, cases: list[Case]) -> Results:
    results = Results()
    with source_tree(revision) as env, jupyter_server("--CodestralExtension.backend=embedded", env=env) as (
        base, headers, _
    ):
        with httpx.Client(headers=headers, timeout=600) as client:
            wait_model_ready(client, base)
            for case in tqdm(cases, desc=name, unit="case"):
                client.post(f"{base}/complete", json=case.body(prefetch=True))  # entering the cell
                reply = client.post(f"{base}/complete", json=case.body())
                if reply.status_code != 200:
                    results.errors += 1
                    continue
                done = reply.json()
                results.outcomes.append(Outcome(case, done["completion"], done.get("confidence"), done.get("cut")))
    return results


def rate(values: list[bool]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def report(table: dict[str, Results]) -> None:
    print(f"{'config':<8}{'kind':<7}{'n':>5}{'exact':>7}{'ES':>7}{'parses':>8}{'1st exact':>11}{'1st ES':>8}"
          f"{'1st parses':>12}{'shown':>7}")
    for kind in KINDS:
        for name, results in table.items():
            rows = [o for o in results.outcomes if o.case.kind == kind]
            print(f"{name:<8}{kind:<7}{len(rows):>5}{rate([o.exact for o in rows]):>7}"
                  f"{mean([o.similarity for o in rows]):>7}{rate([o.parses for o in rows]):>8}"
                  f"{rate([o.first_exact for o in rows]):>11}{mean([o.first_similarity for o in rows]):>8}"
                  f"{rate([o.first_parses for o in rows]):>12}{rate([bool(o.completion.strip()) for o in rows]):>7}")
    for name, results in table.items():
        cuts = Counter(o.cut or "-" for o in results.outcomes)
        total = max(1, len(results.outcomes))
        print(f"{name}: what ended the suggestions: "
              + ", ".join(f"{cut} {n / total:.0%}" for cut, n in cuts.most_common()) + f"; errors {results.errors}")
    for name, results in table.items():
        scored = [o for o in results.outcomes if o.confidence is not None and o.completion.strip()]
        if not scored:
            continue
        print(f"{name}: a confidence threshold (the suggestion's mean token log-probability) against what it shows:")
        print(f"  {'threshold':>10}{'shown':>8}{'exact of shown':>16}{'ES of shown':>13}")
        for threshold in (None, -2.0, -1.5, -1.0, -0.75, -0.5, -0.35, -0.25):
            shown = [o for o in scored if threshold is None or o.confidence >= threshold]  # type: ignore[operator]
            label = "none" if threshold is None else f"{threshold:g}"
            print(f"  {label:>10}{len(shown) / len(scored):>8.0%}{rate([o.exact for o in shown]):>16}"
                  f"{mean([o.similarity for o in shown]):>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=60, help="cells drawn (each gives up to one case of each kind)")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--configs", default="before,now")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the 'before' configuration")
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--log", type=Path, help="write every case's suggestion per configuration here (JSON lines)")
    args = parser.parse_args()

    cases = make_cases(args.folder, args.cells, args.seed)
    counts = Counter(case.kind for case in cases)
    table = {}
    for name in args.configs.split(","):
        table[name] = run_config(name, args.before if name == "before" else None, cases)
    print(f"\n{len(cases)} gaps from {args.cells} cells (seed {args.seed}): "
          + ", ".join(f"{counts[k]} {k}" for k in KINDS) + "; embedded model through the HTTP endpoint, after a "
          f"prefetch of the same place; 'before' is {args.before}")
    report(table)
    print("exact: the cell after accepting the whole suggestion is the original; ES: edit similarity of the text "
          "inserted with what was cut; parses: the cell after accepting is valid Python; '1st': the same with only "
          "the suggestion's first line (and the first line cut); shown: a suggestion was made.")
    if args.log:
        with args.log.open("w") as log:
            for name, results in table.items():
                for o in results.outcomes:
                    log.write(json.dumps({"config": name, "kind": o.case.kind, "case": f"{o.case.notebook}#{o.case.cell}",
                                          "target": o.case.target, "completion": o.completion,
                                          "confidence": o.confidence, "cut": o.cut}) + "\n")


if __name__ == "__main__":
    main()
