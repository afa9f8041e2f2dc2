"""Parse and validate the body of an edit: rewrite, fix or document a range of one cell.

The first stage of the edit engines' data flow (request → context → chat prompt → backend stream →
answer → response), built like :mod:`request`: bytes in, a frozen :class:`EditRequest` out, or a
:class:`RequestError` that names the field.  The notebook's cells are read by the same code as a
completion's, so their limits, tags and metadata mean the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import jsonio
from .contract import limit
from .errors import ErrorKind, RequestError
from .request import (
    Cell,
    CompletionRequest,
    RequestLimits,
    _check_int,
    _check_text,
    _notebook_enabled,
    _optional,
    _parse_cells,
    _read,
    document_fields,
)

# A rewrite's instruction is a sentence or a few, typed in a small input box: a longer one is pasted
# text that belongs in the cell (the contract's bound).
MAX_INSTRUCTION_CHARS: int = limit("EditRequest", "instruction", "maxLength")
# A traceback sent for `fix` is cut to this many characters, from its end (where the error is) before
# it enters the prompt; a longer one is refused here so that no request carries megabytes of output.
MAX_TRACEBACK_CHARS = 200_000

# IPython colours its tracebacks with ANSI escape sequences: none of them means anything to a model.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class EditKind(StrEnum):
    REWRITE = "rewrite"  # as the instruction says
    FIX = "fix"  # repair the error the cell raised (or the bug the model sees)
    DOCUMENT = "document"  # a docstring, or a comment block; the code itself unchanged


@dataclass(frozen=True)
class CellError:
    """The error a cell's last run raised, from its outputs (nbformat's ``output_type: error``)."""

    ename: str
    evalue: str
    traceback: str  # the traceback's lines joined, without colour codes

    def text(self, limit: int) -> str:
        """The traceback within ``limit`` characters, its end kept (where the error is named)."""
        whole = self.traceback or f"{self.ename}: {self.evalue}"
        return whole if len(whole) <= limit else "..." + whole[-limit:]


@dataclass(frozen=True)
class EditRequest:
    cells: tuple[Cell, ...]
    cell_index: int
    kind: EditKind
    start: int  # the range to replace, in code points of the cell's source
    end: int
    instruction: str = ""
    error: CellError | None = None  # for `fix`: what the cell's last run raised
    language: str = "python"
    path: str | None = None
    kernel_id: str | None = None
    stream: bool = False
    notebook_enabled: bool = True
    # Only read the edit's prompt into the model's cache (the frontend asks it for Fix when a cell raises).
    prefetch: bool = False

    @property
    def source(self) -> str:
        return self.cells[self.cell_index].source

    @property
    def selected(self) -> str:
        return self.source[self.start : self.end]

    @property
    def document_id(self) -> str:
        """The document, for "newest request wins" (edits and completions of one document are apart)."""
        return f"edit:{self.path or '<untitled>'}"

    def at_range(self) -> CompletionRequest:
        """The same notebook as a completion request at the range's start: what the context builder
        takes (the earlier and later cells within a budget, the kernel's variables, the policy's tags)."""
        return CompletionRequest(
            cells=self.cells,
            cell_index=self.cell_index,
            cursor=self.start,
            language=self.language,
            path=self.path,
            kernel_id=self.kernel_id,
            notebook_enabled=self.notebook_enabled,
        )


def _fail(message: str, status: int = 400) -> RequestError:
    return RequestError(ErrorKind.BAD_REQUEST, message, status)


def parse_edit_request(raw: bytes, limits: RequestLimits | None = None) -> EditRequest:
    """Validate an edit's body; raise :class:`RequestError` with a message naming the field."""
    limits = limits or RequestLimits()
    try:
        return _validated(_read(raw, jsonio.loads), limits)
    except RequestError:
        # As for a completion: the standard library's reading is the one whose checks name an integer
        # beyond 64 bits (a refused request is rare: read twice).
        return _validated(_read(raw, json.loads), limits)


def _validated(body: Any, limits: RequestLimits) -> EditRequest:
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.")
    if "cells" not in body:
        raise _fail("An edit needs 'cells' (the notebook) and 'cell_index' (the cell to edit).")
    cells = _parse_cells(body["cells"], limits)
    cell_index = _check_int(body.get("cell_index"), "cell_index")
    if not 0 <= cell_index < len(cells):
        raise _fail(f"'cell_index' {cell_index} is out of range (the notebook has {len(cells)} cells).")
    cell = cells[cell_index]
    if cell.cell_type != "code":
        raise _fail(f"Edits are offered in code cells; cell {cell_index} is a {cell.cell_type} cell.")

    kind_value = body.get("kind")
    if kind_value not in set(EditKind):
        raise _fail(f"'kind' must be one of {', '.join(EditKind)}.")
    kind = EditKind(kind_value)

    start, end = _selection(body.get("selection"), len(cell.source))
    instruction = body.get("instruction")
    if instruction is None:
        instruction = ""
    instruction = _check_text(instruction, "instruction", MAX_INSTRUCTION_CHARS).strip()
    if kind == EditKind.REWRITE and not instruction:
        raise _fail("'instruction' is required for a rewrite: say what to change.")

    language, path, kernel_id = document_fields(body)
    stream = _optional(body, "stream", bool, False)
    prefetch = _optional(body, "prefetch", bool, False)

    raw_cell = body["cells"][cell_index]
    return EditRequest(
        cells=cells,
        cell_index=cell_index,
        kind=kind,
        start=start,
        end=end,
        instruction=instruction,
        error=last_error(raw_cell.get("outputs"), cell_index),
        language=language,
        path=path,
        kernel_id=kernel_id,
        stream=stream,
        notebook_enabled=_notebook_enabled(body.get("metadata")),
        prefetch=prefetch,
    )


def _selection(value: Any, length: int) -> tuple[int, int]:
    """The range ``{"start": a, "end": b}`` in the cell (absent: the whole cell)."""
    if value is None:
        return 0, length
    if not isinstance(value, dict):
        raise _fail('\'selection\' must be an object like {"start": 0, "end": 42}.')
    unknown = sorted(set(value) - {"start", "end"})
    if unknown:
        raise _fail(f"'selection' has an unknown field {unknown[0]!r}; its fields are start and end.")
    start = _check_int(value.get("start"), "selection.start")
    end = _check_int(value.get("end"), "selection.end")
    if not 0 <= start <= end <= length:
        raise _fail(f"'selection' {start}..{end} is outside the cell (it has {length} characters).")
    return start, end


def last_error(outputs: Any, cell_index: int) -> CellError | None:
    """The last ``error`` output of a cell's nbformat outputs, or None."""
    if outputs is None:
        return None
    where = f"cells[{cell_index}].outputs"
    if not isinstance(outputs, list):
        raise _fail(f"'{where}' must be a list of outputs, as nbformat stores them.")
    for output in reversed(outputs):
        if not isinstance(output, dict):
            raise _fail(f"'{where}' must hold objects, as nbformat stores them.")
        if output.get("output_type") != "error":
            continue
        ename = _check_text(output.get("ename", ""), f"{where}.ename", 1000)
        evalue = _check_text(output.get("evalue", ""), f"{where}.evalue", MAX_TRACEBACK_CHARS)
        lines = output.get("traceback", [])
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise _fail(f"'{where}.traceback' must be a list of strings.")
        traceback = _check_text("\n".join(lines), f"{where}.traceback", MAX_TRACEBACK_CHARS)
        return CellError(ename, evalue, _ANSI.sub("", traceback))
    return None
