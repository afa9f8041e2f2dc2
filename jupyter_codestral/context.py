"""Turn "cursor at offset N in cell K" into the text around the cursor.

The notebook is rendered as one script in the percent format that jupytext
and most editors understand (``# %%`` before each code cell, markdown as
``# %% [markdown]`` plus comment lines), because code models have seen that
shape often.  Everything here is a pure function of the request.

The four pieces are kept apart (earlier cells, the current cell before and
after the cursor, later cells) so that prompt templates can lay them out for
cache reuse rather than only as one prefix and one suffix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

from .namespace import KernelState, bound_names, place_variables
from .policy import in_prompt
from .request import Cell, CompletionRequest

# Line-comment markers for markdown cells rendered into a code script.
COMMENT_PREFIX = {
    "python": "#",
    "ipython": "#",
    "r": "#",
    "julia": "#",
    "bash": "#",
    "sh": "#",
    "shell": "#",
    "ruby": "#",
    "perl": "#",
    "powershell": "#",
    "nim": "#",
    "elixir": "#",
    "javascript": "//",
    "typescript": "//",
    "java": "//",
    "c": "//",
    "c++": "//",
    "cpp": "//",
    "csharp": "//",
    "c#": "//",
    "go": "//",
    "rust": "//",
    "scala": "//",
    "kotlin": "//",
    "swift": "//",
    "dart": "//",
    "sql": "--",
    "lua": "--",
    "haskell": "--",
    "matlab": "%",
    "octave": "%",
    "wolfram": "(*",
    "maxima": "/*",
}
CELL_SEPARATOR = "\n\n"


def comment_prefix(language: str) -> str:
    return COMMENT_PREFIX.get(language, "#")


def cell_marker(language: str) -> str:
    return f"{comment_prefix(language)} %%"


def estimate_tokens(text: str, chars_per_token: float = 3.2) -> int:
    """A fast, slightly pessimistic token count (code averages ~3.5 chars/token)."""
    return math.ceil(len(text) / chars_per_token)


@dataclass(frozen=True)
class ContextBudget:
    prefix_tokens: int = 1536
    suffix_tokens: int = 512
    chars_per_token: float = 3.2
    # Earlier cells are trimmed in steps of this many tokens, so that typing
    # in the current cell does not shift the start of the prompt (and spoil a
    # KV cache) on every keystroke.
    trim_step_tokens: int = 256
    # The kernel's variables have a budget of their own.
    namespace_tokens: int = 256
    # Where the earlier cells' window begins (see WINDOWS).
    window: str = "steps"

    def in_window(self, window: str) -> ContextBudget:
        """This budget for another window, holding as much earlier text on average.

        A "steps" window holds between one and two steps less than the budget
        left after the current cell's room (its start moves a step at a time),
        so one step and a half less on average; a "nearest" window of half
        steps, with one step less to fill, holds the same."""
        if window == self.window:
            return self
        step = self.trim_step_tokens
        if window == "nearest":
            return replace(
                self, window=window, prefix_tokens=self.prefix_tokens - step, trim_step_tokens=max(1, step // 2)
            )
        return replace(self, window=window, prefix_tokens=self.prefix_tokens + 2 * step, trim_step_tokens=2 * step)


# "steps": at anchors laid in steps from the top of the notebook, so that the
#   start survives typing, new cells and cell moves (for prompts that begin
#   with the notebook, read once and kept in a KV cache).
# "nearest": the nearest cells that fit, the farthest cut at a line: for
#   prompts whose start changes with the cell anyway (the adaptive layout's
#   richer one); the model completes better from it (benchmarks/RESULTS.md).
WINDOWS = ("steps", "nearest")


@dataclass(frozen=True)
class FimContext:
    before: str  # earlier cells
    cell_prefix: str  # the current cell up to the cursor
    cell_suffix: str  # the current cell after the cursor
    after: str  # later cells, starting with a separator
    language: str
    is_notebook: bool
    cells_before: int  # how many earlier cells made it into the budget
    cells_after: int
    namespace: str = ""  # the kernel's variables as a comment block, leading the prompt
    header: str = ""  # the current cell's marker line
    # The prompt's two halves, joined once (they are read several times per request).
    prefix: str = field(init=False, repr=False, compare=False)
    suffix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.namespace + self.before + self.header + self.cell_prefix)
        object.__setattr__(self, "suffix", self.cell_suffix + self.after)

    @property
    def code_prefix(self) -> str:
        """The prefix without the kernel summary (for templates that give it as a file)."""
        return self.before + self.header + self.cell_prefix

    @property
    def line_prefix(self) -> str:
        return self.cell_prefix.rsplit("\n", 1)[-1]

    @property
    def line_suffix(self) -> str:
        return self.cell_suffix.split("\n", 1)[0]

    @property
    def mid_line(self) -> bool:
        """True when there is code to the right of the cursor on its line."""
        return self.line_suffix.strip() != ""


def render_cell(cell: Cell, language: str) -> str:
    """One cell as it appears in the script view of the notebook."""
    marker = cell_marker(language)
    if cell.cell_type == "markdown":
        mark = comment_prefix(language)
        lines = [f"{mark} {line}".rstrip() for line in cell.source.rstrip("\n").split("\n")]
        return f"{marker} [markdown]\n" + "\n".join(lines)
    return f"{marker}\n{cell.source.rstrip()}"


def _tail_lines(text: str, budget: int, cpt: float) -> str:
    """The last whole lines of ``text`` that fit in ``budget`` tokens."""
    lines = text.split("\n")
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = estimate_tokens(line + "\n", cpt)
        if used + cost > budget:
            break
        kept.append(line)
        used += cost
    return "\n".join(reversed(kept))


def _head_lines(text: str, budget: int, cpt: float) -> str:
    """The first whole lines of ``text`` that fit in ``budget`` tokens."""
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        cost = estimate_tokens(line + "\n", cpt)
        if used + cost > budget:
            break
        kept.append(line)
        used += cost
    return "\n".join(kept)


def _trim_cell_prefix(text: str, budget: int, cpt: float) -> str:
    """Keep the current line whole, then as many lines above it as fit."""
    if estimate_tokens(text, cpt) <= budget:
        return text
    head, sep, current_line = text.rpartition("\n")
    if not sep:
        return text
    above = _tail_lines(head, budget - estimate_tokens(current_line, cpt), cpt)
    return (above + "\n" if above else "") + current_line


def _trim_cell_suffix(text: str, budget: int, cpt: float) -> str:
    """Keep the rest of the current line whole, then as many lines as fit."""
    if estimate_tokens(text, cpt) <= budget:
        return text
    current_line, sep, tail = text.partition("\n")
    if not sep:
        return text
    below = _head_lines(tail, budget - estimate_tokens(current_line, cpt), cpt)
    return current_line + ("\n" + below if below else "")


@lru_cache(maxsize=16384)
def _later_cell(cell: Cell, language: str, cpt: float) -> tuple[str, int]:
    """One later cell as it follows the cursor's cell, and its token cost (the same cells come
    with every keystroke: each is rendered once)."""
    text = CELL_SEPARATOR + render_cell(cell, language)
    return text, estimate_tokens(text, cpt)


def _pack_later(cells: Sequence[Cell], left: int, language: str, cpt: float) -> list[str]:
    """Later cells, nearest first, while they fit in ``left`` tokens; the first one that
    does not fit is cut at a line boundary, and packing stops."""
    parts: list[str] = []
    for cell in cells:
        if left <= 0:
            break
        if not in_prompt(cell):
            continue
        text, cost = _later_cell(cell, language, cpt)
        if cost > left:
            partial = _head_lines(text, left, cpt)
            if partial.strip():
                parts.append(partial)
            break
        parts.append(text)
        left -= cost
    return parts


class _CellLines(NamedTuple):
    """One earlier cell as it appears in the window, costed once (it comes with every keystroke)."""

    text: str
    lines: tuple[str, ...]  # each with its newline
    costs: tuple[int, ...]  # each line's tokens
    cost: int  # the lines' costs summed
    whole: int  # the tokens of the whole text at once


@lru_cache(maxsize=16384)
def _cell_lines(cell: Cell, language: str, cpt: float) -> _CellLines:
    text = render_cell(cell, language) + CELL_SEPARATOR
    lines = tuple(text.splitlines(keepends=True))
    costs = tuple(estimate_tokens(line, cpt) for line in lines)
    return _CellLines(text, lines, costs, sum(costs), estimate_tokens(text, cpt))


def _window_start(cells: Sequence[_CellLines], left: int, step: int) -> tuple[int, int]:
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


def _nearest_start(cells: Sequence[_CellLines], left: int) -> tuple[int, int]:
    """Where a window of the nearest cells begins: whole cells from the cursor
    up while they fit in ``left`` tokens, then the last lines of the next one."""
    for position in range(len(cells) - 1, -1, -1):
        cell = cells[position]
        if cell.whole <= left:
            left -= cell.whole
            continue
        line = len(cell.costs)
        while line > 0 and cell.costs[line - 1] <= left:
            line -= 1
            left -= cell.costs[line]
        if "".join(cell.lines[line:]).strip():
            return position, line
        return position + 1, 0
    return 0, 0


class _EarlierWindow(NamedTuple):
    """The earlier cells' window, as the prompt shows them."""

    start: int  # the notebook index where it begins (the cursor's cell when it is empty)
    cells: tuple[tuple[int, str], ...]  # (notebook index, text) of each cell in it
    text: str  # the cells' texts joined (one string object while the earlier cells stay the same)


@lru_cache(maxsize=256)
def _earlier_window(
    cells: tuple[Cell, ...], language: str, cpt: float, left: int, step: int, window: str
) -> _EarlierWindow:
    """The window of ``cells`` (the cells above the cursor's) that fits in ``left`` tokens.

    Cached: while the user types in a cell, the cells above it stay the same, and so does the
    window; its text, the same string each time, is then also found at once by the caches
    keyed on it (redaction)."""
    earlier = [(i, c) for i, c in enumerate(cells) if in_prompt(c)]
    rendered = [_cell_lines(cell, language, cpt) for _, cell in earlier]
    if window == "nearest":
        first, first_line = _nearest_start(rendered, left)
    else:
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
    return _EarlierWindow(start, shown, "".join(text for _, text in shown))


def _comment_lines(lines: Sequence[str], language: str) -> str:
    mark = comment_prefix(language)
    return "".join(f"{mark} {line}\n" for line in lines)


def build_context(request: CompletionRequest, budget: ContextBudget, kernel: KernelState | None = None) -> FimContext:
    """``kernel``: what the notebook's kernel has told about its variables (may be ``None``)."""
    cpt = budget.chars_per_token
    language = request.language
    source = request.current_source
    cell_prefix = _trim_cell_prefix(source[: request.cursor], budget.prefix_tokens, cpt)
    cell_suffix = _trim_cell_suffix(source[request.cursor :], budget.suffix_tokens, cpt)

    if not request.is_notebook:
        leading = place_variables([None], [None], 0, 0, kernel).leading if kernel else []
        block = _leading_block(leading, language, budget)
        return FimContext("", cell_prefix, cell_suffix, "", language, False, 0, 0, block)

    current = request.cells[request.cell_index]
    header = "" if current.cell_type == "markdown" else cell_marker(language) + "\n"

    # Earlier cells, in notebook order, in a window (budget.window).  Room is
    # kept for the current cell in steps, so typing rarely moves its start.
    step = max(1, budget.trim_step_tokens)
    reserve = max(1, math.ceil(estimate_tokens(header + cell_prefix, cpt) / step)) * step
    left = max(0, budget.prefix_tokens - reserve)
    earlier = _earlier_window(request.cells[: request.cell_index], language, cpt, left, step, budget.window)

    placement = None
    if kernel is not None:
        visible = [c.cell_type == "code" and in_prompt(c) for c in request.cells]
        sources = [c.source if shown else None for c, shown in zip(request.cells, visible, strict=True)]
        counts = [c.execution_count for c in request.cells]
        # What a cell kept out of prompts made stays out too (its kernel variables).
        hidden = frozenset(
            name
            for c, shown in zip(request.cells, visible, strict=True)
            if c.cell_type == "code" and not shown
            for name in bound_names(c.source)
        )
        placement = place_variables(sources, counts, request.cell_index, earlier.start, kernel, hidden)
    if placement and placement.after_cell:
        # The variables a cell made, like its output, before the separator.
        parts: list[str] = []
        for index, text in earlier.cells:
            outputs = placement.after_cell.get(index)
            parts.append(text.rstrip("\n") + "\n" + _comment_lines(outputs, language) + "\n" if outputs else text)
        before = "".join(parts)
    else:
        before = earlier.text

    left = budget.suffix_tokens - estimate_tokens(cell_suffix, cpt)
    later = request.cells[request.cell_index + 1 :]
    after_parts = _pack_later(later, left, language, cpt)
    after = "".join(after_parts)
    if after:
        after += "\n"

    return FimContext(
        before=before,
        cell_prefix=cell_prefix,
        cell_suffix=cell_suffix,
        after=after,
        language=language,
        is_notebook=True,
        cells_before=len(earlier.cells),
        cells_after=len(after_parts),
        namespace=_leading_block(placement.leading if placement else [], language, budget),
        header=header,
    )


def _leading_block(lines: Sequence[str], language: str, budget: ContextBudget) -> str:
    """The variables no visible cell explains, as comment lines leading the prompt, within their budget."""
    if not lines:
        return ""
    kept = _head_lines("\n".join(lines), budget.namespace_tokens, budget.chars_per_token).split("\n")
    kept = [line for line in kept if line]
    if not kept:
        return ""
    mark = comment_prefix(language)
    return f"{mark} Variables in the running kernel:\n" + _comment_lines(kept, language) + "\n"
