"""Turn "cursor at offset N in cell K" into the text around the cursor.

The notebook is rendered as one script (``script.py``): the earlier cells in a window (``window.py``),
each run cell followed by the variables it made (``kernel_variables.py``), the current cell before and
after the cursor, the later cells.  The pieces are kept apart so that prompt templates can lay them out
for cache reuse rather than only as one prefix and one suffix.  Everything here is a pure function of
the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from .kernel_variables import KernelState, Placement, bound_names, place_variables
from .policy import in_prompt
from .request import Cell, CompletionRequest
from .script import (
    CELL_SEPARATOR,
    cell_marker,
    comment_prefix,
    estimate_tokens,
    head_lines,
    output_marker,
    render_cell,
    tail_lines,
    variables_marker,
)
from .window import cell_lines, earlier_window

# The names other modules take from here.
__all__ = [
    "CELL_SEPARATOR",
    "ContextBudget",
    "FimContext",
    "build_context",
    "cell_marker",
    "comment_prefix",
    "estimate_tokens",
    "nearer",
    "next_window",
]


@dataclass(frozen=True)
class ContextBudget:
    """How much of the notebook a prompt holds. The defaults are the embedded model's; each backend
    kind's own budget is in ``backends.KINDS``."""

    prefix_tokens: int = 1536
    suffix_tokens: int = 384
    # Earlier cells are trimmed in steps of this many tokens, so that typing
    # in the current cell does not shift the start of the prompt (and spoil a
    # KV cache) on every keystroke.
    trim_step_tokens: int = 512
    chars_per_token: float = 3.2
    # The kernel's variables have a budget of their own.
    namespace_tokens: int = 256
    # The nearer prompt (answered from where nothing near the cursor was read before: a cell entered cold):
    # the nearest earlier cells within this many tokens (0: no nearer prompt), and the nearest later cells
    # within ``near_later_tokens`` as the split layout's file before the notebook (0: none).
    near_tokens: int = 256
    near_later_tokens: int = 0

    @property
    def richer(self) -> ContextBudget:
        """The budget of a richer prompt (the later cells before the notebook: ``templates.LAYOUTS``): a step
        more of earlier cells, and a third more of the cells below.  It is read once per cell, while the
        user thinks, so its size costs no waiting, and the model completes better with more on both sides
        (``benchmarks/layout_quality.py``, layout ``richer`` against ``split``)."""
        return replace(
            self, prefix_tokens=self.prefix_tokens + self.trim_step_tokens, suffix_tokens=self.suffix_tokens * 4 // 3
        )


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
    # Lines only the prompt holds, never code to show: what runs produced, the kernel's variables, their
    # marker lines (stripped).
    prompt_lines: frozenset[str] = frozenset()
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


def _trim_cell_prefix(text: str, budget: int, cpt: float) -> str:
    """Keep the current line whole, then as many lines above it as fit."""
    if estimate_tokens(text, cpt) <= budget:
        return text
    head, sep, current_line = text.rpartition("\n")
    if not sep:
        return text
    above = tail_lines(head, budget - estimate_tokens(current_line, cpt), cpt)
    return (above + "\n" if above else "") + current_line


def _trim_cell_suffix(text: str, budget: int, cpt: float) -> str:
    """Keep the rest of the current line whole, then as many lines as fit."""
    if estimate_tokens(text, cpt) <= budget:
        return text
    current_line, sep, tail = text.partition("\n")
    if not sep:
        return text
    below = head_lines(tail, budget - estimate_tokens(current_line, cpt), cpt)
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
            partial = head_lines(text, left, cpt)
            if partial.strip():
                parts.append(partial)
            break
        parts.append(text)
        left -= cost
    return parts


def _comment_lines(lines: Sequence[str], language: str) -> str:
    mark = comment_prefix(language)
    return "".join(f"{mark} {line}\n" for line in lines)


def _notes(marker: str, lines: Sequence[str], language: str) -> str:
    """Lines the prompt shows that are no code (what a run produced, the kernel's variables): a cell of their
    own, under ``marker``, as comments.  A model that imitates them begins with a cell marker, where its
    suggestion is cut (and where a backend stops: ``pipeline.stop_sequences``)."""
    return f"{marker}\n" + _comment_lines(lines, language)


def build_context(
    request: CompletionRequest, budget: ContextBudget, kernel: KernelState | None = None, room: int = 0
) -> FimContext:
    """``kernel``: what the notebook's kernel has told about its variables (may be ``None``).

    ``room``: tokens of cells still to come that the earlier cells' window leaves free, so that it takes
    the start those cells will give it (``next_window``)."""
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

    # Earlier cells, in notebook order, in a window that leaves a step of room for the current cell: its
    # start depends on the cells above the cursor only, never on what is being typed (window.py).
    step, left = _window_room(budget)
    earlier = earlier_window(request.cells[: request.cell_index], language, cpt, left - room, step)

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
        ranking_end = _ranking_end(request, earlier.start, left - step - _step_ahead(step), cpt)
        placement = place_variables(sources, counts, request.cell_index, earlier.start, kernel, hidden, ranking_end)
    output = output_marker(language)
    if placement and placement.after_cell:
        # The variables a cell made, like its output, before the separator.
        parts: list[str] = []
        for index, text in earlier.cells:
            outputs = placement.after_cell.get(index)
            parts.append(text.rstrip("\n") + "\n" + _notes(output, outputs, language) + "\n" if outputs else text)
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
        prompt_lines=_prompt_lines(placement, language),
    )


def _window_room(budget: ContextBudget) -> tuple[int, int]:
    """The window's step, and the tokens it may hold (a step is left for the current cell)."""
    step = max(1, budget.trim_step_tokens)
    return step, max(0, budget.prefix_tokens - step)


def _ranking_end(request: CompletionRequest, start: int, tokens: int, cpt: float) -> int:
    """Where the cells whose mentions rank the leading block end: the other cells (the cursor's aside)
    from the window's ``start`` within ``tokens``.  A window holds more than that from the moment its
    start is read ahead (``next_window``) until it moves, so a cell written or pasted after them, typing,
    or a cell that mentions a name again leave the block (the prompt's start) as it was read."""
    used = 0
    for index in range(start, len(request.cells)):
        cell = request.cells[index]
        if index == request.cell_index or not in_prompt(cell):
            continue
        if used >= tokens:
            return index
        used += cell_lines(cell, request.language, cpt).whole
    return len(request.cells)


def _step_ahead(step: int) -> int:
    """How near the window's next step must be for its start to be read ahead: within half a step of
    cells still to come (a few cells on the embedded model's window).  Earlier, a read-ahead would often
    be spent on a start that more typing in the cursor's cell moves; later, cells pasted or run at once
    overtake it."""
    return step // 2


def next_window(request: CompletionRequest, budget: ContextBudget, kernel: KernelState | None) -> FimContext | None:
    """The context of a new cell after the cursor's, with the window's next step taken, when that step is
    near: when the cursor's cell and a few more (:func:`_step_ahead`: cells pasted or run in between, the
    notes of runs) would overflow the window.

    A step drops the cells at the window's start, and the kernel's variables they bound move into the
    block leading the prompt: new text at its start, a few hundred tokens (seconds on a CPU) to read
    when the user enters the cell where it comes.  Steps go from anchor to anchor (``window.py``), so the
    start is the same whichever cells make it come, and a model that reads this context ahead, while the
    user thinks, finds that start read.  Without a kernel a step only drops text, which the model's kept
    tokens, moved, cover: nothing to read."""
    if kernel is None or kernel.latest is None or not request.is_notebook:
        return None
    step, left = _window_room(budget)
    index, language, cpt = request.cell_index, request.language, budget.chars_per_token
    room = min(_step_ahead(step), left)
    now = earlier_window(request.cells[:index], language, cpt, left, step)
    then = earlier_window(request.cells[: index + 1], language, cpt, left - room, step)
    if then.text.startswith(now.text):
        return None  # the window keeps its start a while: what comes next follows what was read
    cells = (*request.cells[: index + 1], Cell("code", ""), *request.cells[index + 1 :])
    entered = replace(request, cells=cells, cell_index=index + 1, cursor=0, prefetch=True)
    return build_context(entered, budget, kernel, room)


def _leading_block(lines: Sequence[str], language: str, budget: ContextBudget) -> str:
    """The variables no visible cell explains, as notes leading the prompt, within their budget."""
    if not lines:
        return ""
    kept = head_lines("\n".join(lines), budget.namespace_tokens, budget.chars_per_token).split("\n")
    kept = [line for line in kept if line]
    if not kept:
        return ""
    return _notes(variables_marker(language), kept, language) + "\n"


def _prompt_lines(placement: Placement | None, language: str) -> frozenset[str]:
    """The notes' lines as the prompt shows them (stripped), and their markers."""
    if placement is None:
        return frozenset()
    mark = comment_prefix(language)
    notes = [*placement.leading, *(line for lines in placement.after_cell.values() for line in lines)]
    return frozenset(
        {output_marker(language), variables_marker(language), *(f"{mark} {line}".strip() for line in notes)}
    )


def nearer(context: FimContext, budget: ContextBudget) -> FimContext | None:
    """``context`` with only its nearest earlier cells (whole cells, within ``budget.near_tokens``), and where
    ``budget.near_later_tokens`` says so only its nearest later cells; or None when that would not be much
    shorter.  The earlier cells are the same text as ``context``'s end, so what is read of them stays read when
    the whole context is read after them."""
    if budget.near_tokens <= 0:
        return None
    before = context.before
    room = round(budget.near_tokens * budget.chars_per_token)  # in characters, as estimate_tokens counts
    if len(before) <= room + round(128 * budget.chars_per_token):
        return None
    marker = re.compile("^" + re.escape(cell_marker(context.language)), re.MULTILINE)
    starts = [match.start() for match in marker.finditer(before)]
    start = next((p for p in starts if len(before) - p <= room), len(before))
    near = replace(context, before=before[start:], cells_before=sum(p >= start for p in starts))
    if budget.near_later_tokens <= 0:
        return near
    after = context.after
    room = int(budget.near_later_tokens * budget.chars_per_token)  # in characters, not one over
    starts_after = [match.start() for match in marker.finditer(after)]  # after starts with a marker
    ends = [*starts_after[1:], len(after)]
    end = max((p for p in ends if p <= room), default=0) or after.rfind("\n", 0, room) + 1  # else the next cell's head
    return replace(near, after=after[:end], cells_after=len(marker.findall(after, 0, end)))
