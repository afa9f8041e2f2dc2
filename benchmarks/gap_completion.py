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
``cut``).

Configurations run one after another, each on a server of its own: ``before`` is the code of
``--before`` (a git revision), ``now`` the working tree.

    python benchmarks/gap_completion.py [--cells 60] [--configs before,now]

``--rules`` instead asks the embedded model once per case for its raw completion (the service's own
prompts and stops, in-process) and applies each set of rules that end a suggestion to it
(``postprocess.Rule``), to choose them; then, with the default rules, each ``min_confidence`` threshold
as the service gates (the first line's mean token log-probability): the precision of what is shown
against the share of gaps that get a suggestion.  ``--raw FILE`` keeps the raw completions, so that
rules can be compared again without the model:

    python benchmarks/gap_completion.py --rules [--raw raw.jsonl]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from _common import BENCH_NOTEBOOKS, jupyter_server, source_tree, wait_model_ready
from tqdm import tqdm

from jupyter_codestral.evaluation import edit_similarity, read_cells
from jupyter_codestral.postprocess import CompletionFilter, PostprocessOptions, Rule

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
        # As strict as ``exact``: leading white space counts (the cursor is after the indentation already).
        return self.first_line.rstrip() == self.case.target.split("\n", 1)[0].rstrip()

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
    server = partial(jupyter_server, "--CodestralExtension.backend=embedded", refuse_amx=revision is not None)
    with source_tree(revision) as env, server(env=env) as (base, headers, _):
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


# The rule sets compared by --rules: what ends a suggestion besides a cell marker, a fence and one line
# where code is right of the cursor.
RULE_SETS = {
    "next line": {Rule.NEXT_LINE},
    "+prompt": {Rule.NEXT_LINE, Rule.PROMPT},
    "+near": {Rule.NEXT_LINE, Rule.NEAR_NEXT_LINE, Rule.PROMPT},
    "+dedent": {Rule.NEXT_LINE, Rule.NEAR_NEXT_LINE, Rule.PROMPT, Rule.DEDENT},
    "+statement (default)": {Rule.NEXT_LINE, Rule.NEAR_NEXT_LINE, Rule.PROMPT, Rule.DEDENT, Rule.STATEMENT},
    "statement only": {Rule.PROMPT, Rule.STATEMENT},
}


def cleaning_options(case: Case, budget: Any) -> PostprocessOptions:
    """The options the service cleans this case's completion with."""
    from jupyter_codestral.postprocess import options_for
    from jupyter_codestral.prompt_source import PromptSource
    from jupyter_codestral.request import parse_completion_request

    return options_for(PromptSource(parse_completion_request(json.dumps(case.body()).encode())).context(budget))


Piece = tuple[str, float, int]  # a piece of the raw completion: its text, its tokens' log-probability, how many


async def raw_completions(cases: list[Case]) -> list[tuple[Case, list[Piece]]]:
    """Each case's raw completion from the embedded model (after a prefetch of its place), piece by piece."""
    import tempfile

    from traitlets.config import Config

    from jupyter_codestral.app import CodestralExtension
    from jupyter_codestral.assembly import assemble
    from jupyter_codestral.backends.base import FimRequest, Scored
    from jupyter_codestral.pipeline import stop_sequences
    from jupyter_codestral.postprocess import options_for
    from jupyter_codestral.prompt_source import PromptSource
    from jupyter_codestral.request import parse_completion_request
    from jupyter_codestral.router import Direct
    from jupyter_codestral.routes import route_kind

    raws = []
    with tempfile.TemporaryDirectory() as kv:
        options = CodestralExtension(config=Config({"CodestralExtension": {"backend": "embedded",
                                                                           "kv_disk_dir": kv}}))
        service = assemble(options).service
        assert isinstance(service.completer, Direct)
        backend = service.completer.backend
        await backend.wait_ready()  # type: ignore[attr-defined]
        try:
            for case in tqdm(cases, desc="raw", unit="case"):
                request = parse_completion_request(json.dumps(case.body()).encode())
                source = PromptSource(request)
                context = source.context(service.budget)
                opts = options_for(context)
                fim = FimRequest(source, service.budget, max_tokens=128, stop=stop_sequences(context, opts.single_line),
                                 route=route_kind(context, opts.single_line))
                async for _ in backend.serve(replace(fim, prefetch=True)):
                    pass
                pieces: list[Piece] = []
                async for piece in backend.serve(fim):
                    if isinstance(piece, Scored):
                        pieces.append((piece.text, piece.logprob, piece.tokens))
                    elif isinstance(piece, str):
                        pieces.append((piece, 0.0, 0))
                raws.append((case, pieces))
        finally:
            await service.aclose()
    return raws


def shown(
    case: Case, pieces: list[Piece], options: PostprocessOptions, threshold: float | None = None
) -> Outcome | None:
    """What the service shows of a raw completion, as ``pipeline.run_completion`` cleans and gates it
    (None: the confidence gate hid it)."""
    from jupyter_codestral.postprocess import ConfidenceGate

    kept = CompletionFilter(options)
    gate = ConfidenceGate(threshold) if threshold is not None else None
    logprob, tokens = 0.0, 0
    for text, piece_logprob, piece_tokens in pieces:
        logprob, tokens = logprob + piece_logprob, tokens + piece_tokens
        delta = kept.feed(text)
        if gate is not None:
            gate.feed(delta, logprob, tokens, kept.finished)
        if kept.finished:
            break
    delta = kept.finish()
    if gate is not None:
        gate.feed(delta, logprob, tokens, True)
        if not gate.shown:
            return None
    return Outcome(case, kept.text, logprob / tokens if tokens else None, kept.cut)


def compare_rules(cases: list[Case], saved: Path | None) -> None:
    from jupyter_codestral.backends import KINDS as BACKEND_KINDS

    if saved is not None and saved.exists():
        known = {(c["case"], c["kind"]): c for c in map(json.loads, saved.read_text().splitlines())}
        raws = [(case, [tuple(p) for p in known[key]["pieces"]]) for case in cases
                if (key := (f"{case.notebook}#{case.cell}", case.kind)) in known]
        print(f"raw completions read from {saved} ({len(raws)} of {len(cases)} cases)")
    else:
        raws = asyncio.run(raw_completions(cases))
        if saved is not None:
            saved.write_text("".join(json.dumps({"case": f"{c.notebook}#{c.cell}", "kind": c.kind, "pieces": pieces})
                                     + "\n" for c, pieces in raws))
    budget = BACKEND_KINDS["embedded"].budget
    cleaning = [(case, pieces, cleaning_options(case, budget)) for case, pieces in raws]
    table: dict[str, Results] = {}
    for name, rules in RULE_SETS.items():
        results = table[name] = Results()
        for case, pieces, opts in cleaning:
            outcome = shown(case, pieces, replace(opts, rules=frozenset(rules)))  # type: ignore[arg-type]
            assert outcome is not None  # (no threshold)
            results.outcomes.append(outcome)
    report(table)
    # The confidence gate, with the default rules: the precision of what is shown against what is hidden.
    print("a confidence threshold (min_confidence: the mean token log-probability of the suggestion's first line) "
          "with the default rules:")
    print(f"  {'threshold':>10}{'shown':>8}{'exact of shown':>16}{'ES of shown':>13}{'parses of shown':>17}"
          f"{'exact of all':>14}")
    for threshold in (None, -2.0, -1.5, -1.0, -0.75, -0.5, -0.35, -0.25):
        outcomes = []
        for case, pieces, opts in cleaning:
            outcome = shown(case, pieces, opts, threshold)  # type: ignore[arg-type]
            if outcome is not None and outcome.completion.strip():
                outcomes.append(outcome)
        label = "none" if threshold is None else f"{threshold:g}"
        print(f"  {label:>10}{len(outcomes) / len(cleaning):>8.0%}{rate([o.exact for o in outcomes]):>16}"
              f"{mean([o.similarity for o in outcomes]):>13}{rate([o.parses for o in outcomes]):>17}"
              f"{sum(o.exact for o in outcomes) / len(cleaning):>14.2f}")


def rate(values: list[bool]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def report(table: dict[str, Results]) -> None:
    width = max(8, *(len(name) + 1 for name in table))
    print(f"{'config':<{width}}{'kind':<7}{'n':>5}{'exact':>7}{'ES':>7}{'parses':>8}{'1st exact':>11}{'1st ES':>8}"
          f"{'1st parses':>12}{'shown':>7}")
    for kind in KINDS:
        for name, results in table.items():
            rows = [o for o in results.outcomes if o.case.kind == kind]
            print(f"{name:<{width}}{kind:<7}{len(rows):>5}{rate([o.exact for o in rows]):>7}"
                  f"{mean([o.similarity for o in rows]):>7}{rate([o.parses for o in rows]):>8}"
                  f"{rate([o.first_exact for o in rows]):>11}{mean([o.first_similarity for o in rows]):>8}"
                  f"{rate([o.first_parses for o in rows]):>12}{rate([bool(o.completion.strip()) for o in rows]):>7}")
    for name, results in table.items():
        cuts = Counter(str(o.cut or "-") for o in results.outcomes)
        total = max(1, len(results.outcomes))
        print(f"{name}: what ended the suggestions: "
              + ", ".join(f"{cut} {n / total:.0%}" for cut, n in cuts.most_common()) + f"; errors {results.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=60, help="cells drawn (each gives up to one case of each kind)")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--configs", default="before,now")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the 'before' configuration")
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    parser.add_argument("--log", type=Path, help="write every case's suggestion per configuration here (JSON lines)")
    parser.add_argument("--rules", action="store_true", help="compare the rules that end a suggestion instead")
    parser.add_argument("--raw", type=Path, help="with --rules: keep the raw completions in this file, and read "
                        "them from it when it exists (to compare rules without the model)")
    args = parser.parse_args()

    cases = make_cases(args.folder, args.cells, args.seed)
    counts = Counter(case.kind for case in cases)
    if args.rules:
        print(f"{len(cases)} gaps from {args.cells} cells (seed {args.seed}): "
              + ", ".join(f"{counts[k]} {k}" for k in KINDS) + "; raw completions of the embedded model, each "
              "rule set applied to the same ones")
        compare_rules(cases, args.raw)
        return
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
