"""``jupyter codestral complete``: the completion the server would give at a position."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..assembly import Assembly
from ..backends.base import Backend
from ..evaluation import read_cells
from ..request import parse_completion_request
from ..router import Direct, Router
from .common import add_backend_flags, configured, final_event, running


def cursor_from_line_column(source: str, line: int, column: int) -> int:
    """Offset of 1-based ``line`` and 0-based ``column``, as editors show them."""
    lines = source.split("\n")
    if not 1 <= line <= len(lines):
        raise SystemExit(f"--line {line} is outside the cell (it has {len(lines)} lines).")
    if not 0 <= column <= len(lines[line - 1]):
        raise SystemExit(f"--column {column} is outside line {line} ({len(lines[line - 1])} characters).")
    return sum(len(text) + 1 for text in lines[: line - 1]) + column


def position_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body for the position the command line names (a notebook's cell, or a file)."""
    path = Path(args.file)
    if path.suffix == ".ipynb":
        cells = read_cells(path)
        if not 0 <= args.cell < len(cells):
            raise SystemExit(f"--cell {args.cell} is out of range (the notebook has {len(cells)} cells).")
        source = cells[args.cell]["source"]
        body: dict[str, Any] = {"cells": cells, "cell_index": args.cell}
    else:
        source = path.read_text(encoding="utf-8")
        body = {"text": source}
    if args.line is not None:
        cursor = cursor_from_line_column(source, args.line, args.column or 0)
    else:
        cursor = len(source) if args.cursor is None else args.cursor
    return body | {"cursor": cursor, "path": str(path), "single_line": args.single_line}


def backend_of(assembly: Assembly, name: str) -> Backend | None:
    """The backend that answered a completion, by the name the reply gives."""
    completer = assembly.service.completer
    if isinstance(completer, Router):
        return completer.backends.get(name)
    return completer.backend if isinstance(completer, Direct) else None


def who_answered(assembly: Assembly, name: str) -> str:
    """The backend that answered, and its kind when it is a named one ("codestral (mistral)")."""
    backend = backend_of(assembly, name)
    kind = backend.settings.backend if backend is not None else name
    return name if kind == name else f"{name} ({kind})"


async def complete_command(args: argparse.Namespace) -> int:
    body = position_body(args)
    assembly = configured(args)
    request = parse_completion_request(json.dumps(body).encode(), assembly.service.limits.request)
    async with running(assembly):
        event = await final_event(assembly, request)
    if args.json:
        # The backend that answered, described as the status describes it, and the reply's own fields.
        answered = backend_of(assembly, event["backend"])
        described = answered.describe() if answered is not None else {}
        reply = {key: value for key, value in event.items() if key not in ("done", "backend", "model")}
        print(json.dumps({**described, "answered_by": event["backend"], **reply}))
    else:
        print(event["completion"])
        t = event["timings"]
        via = f" (after: {event['fallback_reason']})" if event.get("fallback_reason") else ""
        print(
            f"[{who_answered(assembly, event['backend'])} · {event['model']}: first text {t['first_token_ms']:.0f} ms, "
            f"total {t['total_ms']:.0f} ms{via}]",
            file=sys.stderr,
        )
    return 0


def add_parser(verbs: Any) -> None:
    complete = verbs.add_parser(
        "complete",
        help="print the completion the server would give",
        description="Print the completion the server would give at a position (its routes and fallback included).",
    )
    complete.add_argument("file", help="a notebook (.ipynb) or a source file")
    complete.add_argument("--cell", type=int, default=0, help="cell index in the notebook (from 0)")
    complete.add_argument("--cursor", type=int, help="offset in the cell (default: its end)")
    complete.add_argument("--line", type=int, help="line in the cell, from 1 (with --column)")
    complete.add_argument("--column", type=int, help="column in that line, from 0")
    complete.add_argument("--single-line", action="store_true", help="complete one line only")
    complete.add_argument("--json", action="store_true", help="print the reply as JSON")
    add_backend_flags(complete)
    complete.set_defaults(run=complete_command)
