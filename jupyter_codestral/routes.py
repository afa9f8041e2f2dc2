"""Which kind of completion the cursor asks for, and which backends serve each kind.

A *route* is an ordered chain of named backends for one kind of completion,
decided on the server from the context (:func:`route_kind`):

- ``line``: code to the right of the cursor, text before it on the line, or
  the user asked for single lines;
- ``block``: an empty or new line, where several lines make sense;
- ``comment``: inside a comment or a docstring;
- ``markdown``: a markdown cell (no completion unless a route is configured).

and three kinds of edit of a range of a cell (``POST codestral/edit``), each with engines of its own:
``rewrite`` and ``fix`` (refactoring) and ``document``.

Pure functions and values; :mod:`router` serves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .context import FimContext
from .validation import is_non_negative


class RouteKind(StrEnum):
    LINE = "line"
    BLOCK = "block"
    COMMENT = "comment"
    MARKDOWN = "markdown"
    REWRITE = "rewrite"
    FIX = "fix"
    DOCUMENT = "document"


ROUTE_NAMES = frozenset(kind.value for kind in RouteKind)
# The kinds every named backend serves when no routes are configured (markdown only when asked for).
DEFAULT_KINDS = (RouteKind.LINE, RouteKind.BLOCK, RouteKind.COMMENT)
# The edits' kinds (edit_request.EditKind's values); every named backend serves them when no routes are configured.
EDIT_KINDS = (RouteKind.REWRITE, RouteKind.FIX, RouteKind.DOCUMENT)

_STRINGS = re.compile(r"""("|')(?:\\.|(?!\1).)*\1""")


def route_kind(context: FimContext, single_line: bool) -> RouteKind:
    """The kind of completion wanted at the cursor (see the module's docstring)."""
    if context.language == "markdown":
        return RouteKind.MARKDOWN
    before_cursor = context.cell_prefix
    if before_cursor.count('"""') % 2 or before_cursor.count("'''") % 2:
        return RouteKind.COMMENT  # inside a docstring
    line = context.line_prefix
    if "#" in _STRINGS.sub("", line):
        return RouteKind.COMMENT
    if single_line or context.mid_line or line.strip():
        return RouteKind.LINE
    return RouteKind.BLOCK


@dataclass(frozen=True)
class Route:
    """The backends for one kind of completion, in order of preference."""

    backends: tuple[str, ...]
    hedge_ms: float | None = None  # start the next backend too after this long without text


def parse_routes(value: Any, names: set[str]) -> dict[RouteKind, Route]:
    """``{"line": ["embedded"], "block": {"backends": [...], "hedge_ms": 400}}`` checked against the
    backends' names; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('routes must be an object like {"line": ["embedded"], "block": ["codestral"]}.')
    routes: dict[RouteKind, Route] = {}
    for kind, raw in value.items():
        if kind not in ROUTE_NAMES:
            raise ValueError(f"Unknown route {kind!r}; routes are {', '.join(RouteKind)}.")
        hedge_ms = None
        chain = raw
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {"backends", "hedge_ms"})
            if unknown:
                raise ValueError(f"The route {kind!r} has unknown setting {unknown[0]!r}; known: backends, hedge_ms.")
            chain, hedge_ms = raw.get("backends"), raw.get("hedge_ms")
            if hedge_ms is not None and not is_non_negative(hedge_ms):
                raise ValueError(f"The route {kind!r}: hedge_ms must be a number of milliseconds.")
        if isinstance(chain, str):
            chain = [chain]
        if not isinstance(chain, list) or not all(isinstance(n, str) for n in chain):
            raise ValueError(f"The route {kind!r} must be a list of backend names.")
        if not chain:
            continue  # no backend: no completions of this kind
        unknown = [n for n in chain if n not in names]
        if unknown:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"The route {kind!r} names unknown backend {unknown[0]!r} (configured: {known}).")
        routes[RouteKind(kind)] = Route(tuple(chain), None if hedge_ms is None else float(hedge_ms))
    return routes
