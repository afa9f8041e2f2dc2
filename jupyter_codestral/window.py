"""Which earlier cells a prompt shows: a window of the cells above the cursor, within a token budget.

The window begins at anchors laid every step of tokens from the top of the notebook, the first from
which the rest fits.  Its start depends only on the cells above the cursor (not on the cell being
written), so it survives typing, new cells and runs; when the notebook outgrows it, it drops a whole
step at once.  A model that keeps what it read (the embedded one, llama.cpp's server) drops what the
moved start drops and keeps the rest, moved into place (``embedded/kv_reuse.py``).

Pure functions, cached: the cells above the cursor stay the same while the user types.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from .policy import in_prompt
from .request import Cell
from .script import CELL_SEPARATOR, estimate_tokens, render_cell


class CellLines(NamedTuple):
    """One earlier cell as it appears in the window, costed once (it comes with every keystroke)."""

    text: str
    lines: tuple[str, ...]  # each with its newline
    costs: tuple[int, ...]  # each line's tokens
    cost: int  # the lines' costs summed
    whole: int  # the tokens of the whole text at once


@lru_cache(maxsize=16384)
def cell_lines(cell: Cell, language: str, cpt: float) -> CellLines:
    text = render_cell(cell, language) + CELL_SEPARATOR
    lines = tuple(text.splitlines(keepends=True))
    costs = tuple(estimate_tokens(line, cpt) for line in lines)
    return CellLines(text, lines, costs, sum(costs), estimate_tokens(text, cpt))


def _window_start(cells: Sequence[CellLines], left: int, step: int) -> tuple[int, int]:
    """Where the earlier cells' window begins: (cell position, line in that cell).

    The start moves in steps: it is chosen among anchors laid every ``step``
    tokens from the top of the notebook, the first from which the rest fits
    in ``left`` tokens.  So adding a cell at the end, or typing, keeps the
    start (and a KV cache holding it) until the window overflows; then it
    drops a whole step at once.  Anchors are cell starts, and line starts
    inside cells larger than a step."""
    candidates: list[tuple[int, int, int]] = []  # (cumulative tokens, cell position, line)
    used = 0
    for position, cell in enumerate(cells):
        if cell.cost > step:
            for number, cost in enumerate(cell.costs):
                candidates.append((used, position, number))
                used += cost
        else:
            candidates.append((used, position, 0))
            used += cell.cost
    anchors, mark = [], 0
    for candidate in candidates:
        if candidate[0] >= mark:
            anchors.append(candidate)
            mark = (candidate[0] // step + 1) * step
    for cumulative, position, number in [*anchors, *candidates]:
        if used - cumulative <= left:
            return position, number
    return len(cells), 0


class EarlierWindow(NamedTuple):
    """The earlier cells' window, as the prompt shows them."""

    start: int  # the notebook index where it begins (the cursor's cell when it is empty)
    cells: tuple[tuple[int, str], ...]  # (notebook index, text) of each cell in it
    text: str  # the cells' texts joined (one string object while the earlier cells stay the same)


@lru_cache(maxsize=256)
def earlier_window(cells: tuple[Cell, ...], language: str, cpt: float, left: int, step: int) -> EarlierWindow:
    """The window of ``cells`` (the cells above the cursor's) that fits in ``left`` tokens.

    Cached: while the user types in a cell, the cells above it stay the same, and so does the
    window; its text, the same string each time, is then also found at once by the caches
    keyed on it (redaction)."""
    earlier = [(i, c) for i, c in enumerate(cells) if in_prompt(c)]
    rendered = [cell_lines(cell, language, cpt) for _, cell in earlier]
    first, first_line = _window_start(rendered, left, step)
    shown = tuple(
        (
            earlier[position][0],
            "".join(rendered[position].lines[first_line:])
            if position == first and first_line
            else rendered[position].text,
        )
        for position in range(first, len(rendered))
    )
    start = earlier[first][0] if first < len(earlier) else len(cells)
    return EarlierWindow(start, shown, "".join(text for _, text in shown))
