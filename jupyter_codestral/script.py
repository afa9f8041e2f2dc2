"""How a notebook reads as one script: the percent format that jupytext and most editors understand
(``# %%`` before each code cell, markdown as ``# %% [markdown]`` plus comment lines), which code models
have seen often; and what text costs in tokens.  Pure functions."""

from __future__ import annotations

import math

from .request import Cell

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


def output_marker(language: str) -> str:
    """The marker of what a run produced, after the cell that ran (a cell of its own, as code never is)."""
    return f"{cell_marker(language)} [output]"


def variables_marker(language: str) -> str:
    """The marker of the kernel's variables that no cell shown explains, leading the prompt."""
    return f"{cell_marker(language)} [variables in the running kernel]"


def estimate_tokens(text: str, chars_per_token: float = 3.2) -> int:
    """A fast, slightly pessimistic token count (code averages ~3.5 chars/token)."""
    return math.ceil(len(text) / chars_per_token)


def render_cell(cell: Cell, language: str) -> str:
    """One cell as it appears in the script view of the notebook."""
    marker = cell_marker(language)
    if cell.cell_type == "markdown":
        mark = comment_prefix(language)
        lines = [f"{mark} {line}".rstrip() for line in cell.source.rstrip("\n").split("\n")]
        return f"{marker} [markdown]\n" + "\n".join(lines)
    return f"{marker}\n{cell.source.rstrip()}"


def tail_lines(text: str, budget: int, cpt: float) -> str:
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


def head_lines(text: str, budget: int, cpt: float) -> str:
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
