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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .request import Cell, CompletionRequest

# Line-comment markers for markdown cells rendered into a code script.
COMMENT_PREFIX = {
    "python": "#", "ipython": "#", "r": "#", "julia": "#", "bash": "#", "sh": "#",
    "shell": "#", "ruby": "#", "perl": "#", "powershell": "#", "nim": "#", "elixir": "#",
    "javascript": "//", "typescript": "//", "java": "//", "c": "//", "c++": "//", "cpp": "//",
    "csharp": "//", "c#": "//", "go": "//", "rust": "//", "scala": "//", "kotlin": "//",
    "swift": "//", "dart": "//", "sql": "--", "lua": "--", "haskell": "--",
    "matlab": "%", "octave": "%", "wolfram": "(*", "maxima": "/*",
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

    @property
    def prefix(self) -> str:
        return self.namespace + self.before + self.header + self.cell_prefix

    @property
    def code_prefix(self) -> str:
        """The prefix without the kernel summary (for templates that give it as a file)."""
        return self.before + self.header + self.cell_prefix

    @property
    def suffix(self) -> str:
        return self.cell_suffix + self.after

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


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A summary line starts with the name it describes ("df: DataFrame ...",
# "np = module numpy", "def load(path)", "class Model(...)").
SUMMARY_NAME = re.compile(r"(?:class |def )?([A-Za-z_][A-Za-z0-9_]*)")


def rank_namespace(summary: str, request: CompletionRequest) -> list[str]:
    """The summary's lines, the names used in the cells nearest the cursor first.

    Only the *other* cells count, nearest first: the order does not change
    while the user types in the current cell, so the block leading the prompt
    (and a local model's KV cache after it) stays put.  Names no other cell
    mentions keep the kernel's order (most recently defined first) after them."""
    lines = [line for line in summary.split("\n") if line.strip()]
    if not request.is_notebook or len(request.cells) < 2:
        return lines
    named = [(match.group(1) if (match := SUMMARY_NAME.match(line)) else None, line) for line in lines]
    wanted = {name for name, _ in named if name is not None}
    here = request.cell_index
    others = sorted((i for i in range(len(request.cells)) if i != here), key=lambda i: (abs(i - here), i > here))
    distance: dict[str, int] = {}
    for rank, index in enumerate(others):
        if len(distance) == len(wanted):
            break  # every name has its place: the farther cells cannot change the order
        for name in wanted.intersection(IDENTIFIER.findall(request.cells[index].source)):
            distance.setdefault(name, rank)
    unmentioned = len(others)
    order = sorted(range(len(named)), key=lambda i: (distance.get(named[i][0] or "", unmentioned), i))
    return [named[i][1] for i in order]


def namespace_block(summary: str, request: CompletionRequest, budget: ContextBudget) -> str:
    """The kernel summary as comment lines leading the prompt, within its own budget.

    It goes first: measured against placing it just before the current cell,
    the model used it better there (benchmarks/RESULTS.md), and it changes
    only when the user runs code or moves to another cell, so the prompt
    after it stays cacheable.  The variables the nearby cells use come first,
    so the budget is spent on the ones the user is working with."""
    if not summary.strip():
        return ""
    mark = comment_prefix(request.language)
    head = f"{mark} Variables in the running kernel:"
    ranked = "\n".join(rank_namespace(summary, request))
    lines = _head_lines(ranked, budget.namespace_tokens, budget.chars_per_token).split("\n")
    return "\n".join([head, *(f"{mark} {line}" for line in lines if line)]) + "\n\n"


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


def _pack(
    cells: Sequence[Cell],
    left: int,
    cpt: float,
    render: Callable[[Cell], str],
    cut: Callable[[str, int, float], str],
) -> list[str]:
    """Rendered cells, nearest first, while they fit in ``left`` tokens; the
    first one that does not fit is ``cut`` at a line boundary, and packing stops."""
    parts: list[str] = []
    for cell in cells:
        if left <= 0:
            break
        if cell.cell_type == "raw":
            continue
        text = render(cell)
        cost = estimate_tokens(text, cpt)
        if cost > left:
            partial = cut(text, left, cpt)
            if partial.strip():
                parts.append(partial)
            break
        parts.append(text)
        left -= cost
    return parts


def build_context(request: CompletionRequest, budget: ContextBudget, namespace: str = "") -> FimContext:
    """``namespace``: a summary of the kernel's variables, one per line (may be empty)."""
    cpt = budget.chars_per_token
    language = request.language
    source = request.current_source
    cell_prefix = _trim_cell_prefix(source[: request.cursor], budget.prefix_tokens, cpt)
    cell_suffix = _trim_cell_suffix(source[request.cursor :], budget.suffix_tokens, cpt)

    block = namespace_block(namespace, request, budget)
    if not request.is_notebook:
        return FimContext("", cell_prefix, cell_suffix, "", language, False, 0, 0, block)

    current = request.cells[request.cell_index]
    header = "" if current.cell_type == "markdown" else cell_marker(language) + "\n"

    # Earlier cells (nearest first) and later cells, each within its budget.
    left = budget.prefix_tokens - estimate_tokens(header + cell_prefix, cpt)
    step = max(1, budget.trim_step_tokens)
    left = (left // step) * step if left > step else max(left, 0)
    earlier = request.cells[: request.cell_index][::-1]
    before_parts = _pack(earlier, left, cpt, lambda c: render_cell(c, language) + CELL_SEPARATOR, _tail_lines)
    before = "".join(reversed(before_parts))

    left = budget.suffix_tokens - estimate_tokens(cell_suffix, cpt)
    later = request.cells[request.cell_index + 1 :]
    after_parts = _pack(later, left, cpt, lambda c: CELL_SEPARATOR + render_cell(c, language), _head_lines)
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
        cells_before=len(before_parts),
        cells_after=len(after_parts),
        namespace=block,
        header=header,
    )
