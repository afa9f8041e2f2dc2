"""Masked-span cases from real notebooks and how completions are scored.

Shared by ``jupyter codestral bench`` and the benchmark scripts, so every
quality number is computed the same way.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def read_cells(path: Path) -> list[dict[str, Any]]:
    """A notebook's cells as the completion request takes them: type, source and tags (no outputs)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb.get("cells", []):
        source = cell.get("source", "")
        entry: dict[str, Any] = {
            "cell_type": cell.get("cell_type", "code"),
            "source": "".join(source) if isinstance(source, list) else source,
        }
        tags = cell.get("metadata", {}).get("tags")
        if tags:
            entry["metadata"] = {"tags": tags}
        cells.append(entry)
    return cells


@dataclass
class Case:
    """A line of a code cell, typed up to ``stop_at``; the rest of the line is the target."""

    notebook: str
    cells: list[dict[str, str]]
    cell_index: int
    line_index: int
    typed_from: int  # column where typing starts (the line's indentation)
    stop_at: int

    @property
    def line(self) -> str:
        return self.cells[self.cell_index]["source"].split("\n")[self.line_index]

    @property
    def target(self) -> str:
        return self.line[self.stop_at :].strip()

    def request(self, column: int | None = None, **extra: Any) -> dict[str, Any]:
        """The request body with the line typed up to ``column`` and the rest of the line not yet written."""
        column = self.stop_at if column is None else column
        lines = self.cells[self.cell_index]["source"].split("\n")
        head = "\n".join([*lines[: self.line_index], self.line[:column]])
        tail = "\n".join(lines[self.line_index + 1 :])
        cells = [dict(c) for c in self.cells]
        cells[self.cell_index]["source"] = head + ("\n" + tail if tail else "")
        return {
            "cells": cells,
            "cell_index": self.cell_index,
            "cursor": len(head),
            "path": self.notebook,
            "stream": True,
            "single_line": True,
            **extra,
        }


def pick_cases(folder: Path, count: int, seed: int = 7) -> list[Case]:
    """Deterministic cases: code lines of 16-90 characters in cells after the third."""
    rng = random.Random(seed)
    candidates = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = read_cells(path)
        for ci, cell in enumerate(cells):
            if cell["cell_type"] != "code" or ci < 3 or cell["source"].lstrip().startswith("%%"):
                continue
            for li, line in enumerate(cell["source"].split("\n")):
                body = line.strip()
                if 16 <= len(body) <= 90 and not body.startswith(("#", "!", "%")):
                    candidates.append((path.name, cells, ci, li, line))
    if not candidates:
        raise ValueError(f"No code lines to mask in the notebooks of {folder}.")
    cases = []
    for name, cells, ci, li, line in rng.sample(candidates, min(count, len(candidates))):
        indent = len(line) - len(line.lstrip())
        length = len(line) - indent
        stop = indent + rng.randint(max(4, length // 3), max(5, (2 * length) // 3))
        cases.append(Case(name, cells, ci, li, indent, stop))
    return cases


def prefix_distances(a: str, b: str) -> list[int]:
    """The Levenshtein distance from ``a`` to each start of ``b`` (``b[:0]`` to ``b``)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / length of the longer string."""
    if not a and not b:
        return 1.0
    return 1 - prefix_distances(a, b)[-1] / max(len(a), len(b))


def score(completion: str, target: str) -> tuple[bool, float]:
    """(exact match, edit similarity) of the completion's first line against the target."""
    got = completion.split("\n")[0].strip()
    return got == target, edit_similarity(got, target)
