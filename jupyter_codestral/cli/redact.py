"""``jupyter codestral redact``: what redaction replaces in a notebook before a prompt leaves the machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..evaluation import read_cells
from ..redaction import PLACEHOLDER, apply_spans, secret_spans


def document_cells(path: Path) -> list[dict[str, Any]]:
    """A notebook's cells, or a file as one cell."""
    return read_cells(path) if path.suffix == ".ipynb" else [{"source": path.read_text(encoding="utf-8")}]


async def redact_command(args: argparse.Namespace) -> int:
    """Show each line of a notebook or file that redaction changes, as a remote backend would receive it."""
    path = Path(args.file)
    cells = document_cells(path)
    found = 0
    for index, cell in enumerate(cells):
        source = cell["source"]
        spans = secret_spans(source)
        if not spans:
            continue
        found += len(spans)
        sent = apply_spans(source, spans).split("\n")
        for number, (line, after) in enumerate(zip(source.split("\n"), sent, strict=False), start=1):
            if line != after:
                where = f"cell {index}, line {number}" if path.suffix == ".ipynb" else f"line {number}"
                print(f"{where}: {after}")
    print(f"{found} secret{'s' if found != 1 else ''} would be replaced by {PLACEHOLDER} before leaving this machine.")
    return 0


def add_parser(verbs: Any) -> None:
    redact = verbs.add_parser(
        "redact",
        help="show what redaction replaces in a notebook before it is sent",
        description="Print every line of a notebook (or a file) in which credentials would be replaced before a "
        "prompt is sent to a remote backend, as it would be sent.",
    )
    redact.add_argument("file", help="a notebook (.ipynb) or a source file")
    redact.set_defaults(run=redact_command)
