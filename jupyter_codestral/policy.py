"""Where completions are offered, and which text may enter a prompt.

Two sources, both enforced on the server whatever the frontend did:

- the notebook itself (its author's choice, stored by nbformat): metadata
  ``"codestral": {"enabled": false}`` turns completions off in a notebook, a
  cell tag ``no-completion`` in a cell, and a cell tag ``no-context`` keeps the
  cell's text out of every prompt (as a raw cell is);
- the server's configuration (a teacher's or an administrator's, which a
  student cannot change from the browser): ``disabled_paths`` and
  ``allowed_paths``, glob patterns relative to the server's root, and
  ``disabled_kinds``, which turns off only some kinds of help there (a
  teacher allows completions and forbids ``fix``, or the reverse).

Pure functions and values; the service applies them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from wcmatch import glob

from .edit_request import EditKind
from .request import Cell, CompletionRequest

NO_COMPLETION = "no-completion"  # cell tag: no completions in this cell
NO_CONTEXT = "no-context"  # cell tag: this cell's text never enters a prompt

COMPLETION = "completion"  # the policy's name for inline suggestions, beside the edit kinds
EDIT_KINDS = tuple(kind.value for kind in EditKind)
POLICY_KINDS = (COMPLETION, *EDIT_KINDS)
EDITS = "edits"  # in disabled_kinds: the three edit kinds at once

# "**" spans folders; "*" does not cross "/"; dot files match like others.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB


def in_prompt(cell: Cell) -> bool:
    """Whether ``cell``'s text may be part of a prompt."""
    return cell.cell_type != "raw" and NO_CONTEXT not in cell.tags


class OffScope(StrEnum):
    """Where completions are off, for the status bar: "off in this cell", "off in this notebook"."""

    CELL = "cell"  # the cell's tags
    NOTEBOOK = "notebook"  # the notebook's metadata
    COURSE_POLICY = "course_policy"  # the server's disabled_paths or allowed_paths


@dataclass(frozen=True)
class Off:
    """Completions are off here: where, and why (a sentence for the user)."""

    scope: OffScope
    message: str


def notebook_off(request: CompletionRequest, what: str = "Completions") -> Off | None:
    """Whether the notebook or the cell at the cursor says no completions here (``what``: what its message
    says is off, "Edits" for an edit)."""
    if not request.notebook_enabled:
        return Off(OffScope.NOTEBOOK, f"{what} are off in this notebook (its metadata: codestral.enabled is false).")
    tags = request.cells[request.cell_index].tags
    if NO_COMPLETION in tags:
        return Off(OffScope.CELL, f"{what} are off in this cell (tag no-completion).")
    if NO_CONTEXT in tags:
        return Off(
            OffScope.CELL, f"{what} are off in this cell: its tag no-context keeps its text out of every prompt."
        )
    return None


def normalize_path(path: str) -> str:
    """An API path as Jupyter's contents service would resolve it ("a/./b/../c.ipynb" is "a/c.ipynb")."""
    clean = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")
    return "" if clean == "." else clean


def kinds_named(names: Iterable[str]) -> frozenset[str]:
    """The policy kinds a ``disabled_kinds`` entry names ("edits" is the three edit kinds)."""
    kinds = set()
    for name in names:
        kinds |= set(EDIT_KINDS) if name == EDITS else {name}
    return frozenset(kinds)


@dataclass(frozen=True)
class PathPolicy:
    """The server's course policy: documents where completions, edits or some kinds of them are refused."""

    disabled: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None  # None: every path not disabled
    kinds_off: tuple[tuple[str, frozenset[str]], ...] = ()  # (glob pattern, the kinds refused where it matches)

    @property
    def active(self) -> bool:
        return bool(self.disabled) or self.allowed is not None or bool(self.kinds_off)

    def reason(self, paths: Iterable[str | None], what: str = "Completions", kind: str = COMPLETION) -> str | None:
        """Why ``kind`` (a completion, or an edit's kind; ``what`` names it in the message) is refused for a
        request about ``paths``, or None.

        ``paths``: the document the request names and those of the sessions
        its kernel belongs to; any one refused refuses the request, so a
        hand-made request cannot name another document to get around it."""
        if not self.active:
            return None
        for path in paths:
            refusal = self._refuse(path, what, kind)
            if refusal:
                return refusal
        return None

    def kinds_refused(self, path: str) -> list[str]:
        """The kinds refused in ``path``, in ``POLICY_KINDS`` order (for the status: the frontend greys out
        those commands)."""
        return [kind for kind in POLICY_KINDS if self._refuse(path, kind, kind)]

    def _refuse(self, path: str | None, what: str, kind: str) -> str | None:
        if path is None:
            if self.allowed is not None:
                return f"{what} are off here (course policy): only some notebooks allow them."
            return None
        clean = normalize_path(path)
        if self.disabled and glob.globmatch(clean, list(self.disabled), flags=_GLOB_FLAGS):
            return f"{what} are off in {clean} (course policy)."
        if self.allowed is not None and not glob.globmatch(clean, list(self.allowed), flags=_GLOB_FLAGS):
            return f"{what} are off in {clean} (course policy: only some notebooks allow them)."
        for pattern, kinds in self.kinds_off:
            if kind in kinds and glob.globmatch(clean, pattern, flags=_GLOB_FLAGS):
                return f"{what} are off in {clean} (course policy: not allowed there, {pattern})."
        return None
