"""Parse and validate the body of ``POST codestral/complete``.

Pure functions: bytes in, a frozen :class:`CompletionRequest` out, or a
:class:`RequestError` that says exactly which field is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import jsonio
from .contract import limit
from .errors import ErrorKind, RequestError

CELL_TYPES = ("code", "markdown", "raw")


class Cell(NamedTuple):
    """One cell of the notebook (a named tuple: a request makes one per cell, on every keystroke)."""

    cell_type: str
    source: str
    # The kernel's execution number when this cell last ran (nbformat's
    # field); it says which kernel snapshot shows what the cell produced.
    execution_count: int | None = None
    # nbformat's metadata.tags; see policy.py for the ones we honour.
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestLimits:
    max_cells: int = 5000
    max_cell_chars: int = 2_000_000
    max_total_chars: int = 20_000_000
    max_tokens: int = limit("CompleteRequest", "max_tokens", "maximum")


@dataclass(frozen=True)
class CompletionRequest:
    cells: tuple[Cell, ...]
    cell_index: int
    cursor: int
    language: str = "python"
    path: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    kernel_id: str | None = None
    is_notebook: bool = True
    single_line: bool = False  # the user asked for one line at a time
    prefetch: bool = False  # only read the context into the model's cache; no completion wanted
    # The notebook's metadata.codestral.enabled (false: the author turned completions off here).
    notebook_enabled: bool = True

    @property
    def current_source(self) -> str:
        return self.cells[self.cell_index].source

    @property
    def document_id(self) -> str:
        """Identifies the document for "newest request wins" scheduling."""
        return self.path or "<untitled>"


def _fail(message: str, kind: ErrorKind = ErrorKind.BAD_REQUEST, status: int = 400) -> RequestError:
    return RequestError(kind, message, status)


def _check_text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(f"'{name}' must be a string, not {type(value).__name__}.")
    if len(value) > limit:
        raise _fail(f"'{name}' is too large ({len(value)} characters, limit {limit}).", status=413)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates survive json.loads but cannot reach a backend.
        raise _fail(f"'{name}' contains an invalid character (a lone surrogate).") from None
    return value


def _check_int(value: Any, name: str) -> int:
    # bool is an int subclass; true/false is never a valid index.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(f"'{name}' must be an integer, not {type(value).__name__}.")
    return value


def _optional(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if kind is int:
        return _check_int(value, name)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _fail(f"'{name}' must be a {kind.__name__}, not {type(value).__name__}.")
    return value


def parse_completion_request(raw: bytes, limits: RequestLimits = RequestLimits()) -> CompletionRequest:
    """Validate a request body; raise :class:`RequestError` with a readable message."""
    try:
        return _validated(_read(raw, jsonio.loads), limits)
    except RequestError:
        # The fast reader reads an integer beyond 64 bits as a float: the standard library's
        # reading is the one whose checks name it (a refused request is rare: read twice).
        return _validated(_read(raw, json.loads), limits)


def _read(raw: bytes, loads: Callable[[bytes], Any]) -> Any:
    try:
        return loads(raw)
    except (ValueError, RecursionError):
        raise _fail("The request body is not valid JSON.", kind=ErrorKind.BAD_JSON) from None


def _validated(body: Any, limits: RequestLimits) -> CompletionRequest:
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.")

    if "cells" in body:
        cells = _parse_cells(body["cells"], limits)
        cell_index = _check_int(body.get("cell_index"), "cell_index")
        if not 0 <= cell_index < len(cells):
            raise _fail(f"'cell_index' {cell_index} is out of range (the notebook has {len(cells)} cells).")
        is_notebook = True
    elif "text" in body:
        text = _check_text(body["text"], "text", limits.max_total_chars)
        cells = (Cell("code", text),)
        cell_index = 0
        is_notebook = False
    else:
        raise _fail("The request needs either 'cells' and 'cell_index' (a notebook) or 'text' (a file).")

    cursor = _check_int(body.get("cursor"), "cursor")
    source = cells[cell_index].source
    if not 0 <= cursor <= len(source):
        raise _fail(f"'cursor' {cursor} is out of range (the cell has {len(source)} characters).")
    if cells[cell_index].cell_type == "raw":
        raise _fail("Completions are not offered in raw cells.")

    language, path, kernel_id = document_fields(body)
    max_tokens = _optional(body, "max_tokens", int, None)
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise _fail(f"'max_tokens' must be between 1 and {limits.max_tokens}.")

    return CompletionRequest(
        notebook_enabled=_notebook_enabled(body.get("metadata")),
        cells=cells,
        cell_index=cell_index,
        cursor=cursor,
        language=language,
        path=path,
        stream=_optional(body, "stream", bool, False),
        single_line=_optional(body, "single_line", bool, False),
        prefetch=_optional(body, "prefetch", bool, False),
        max_tokens=max_tokens,
        kernel_id=kernel_id,
        is_notebook=is_notebook,
    )


def document_fields(body: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """The fields that say where a request comes from: its language, its document's path, its kernel."""
    language = _check_text(_optional(body, "language", str, "python"), "language", 64).strip().lower() or "python"
    path = _optional(body, "path", str, None)
    if path is not None:
        path = _check_text(path, "path", 4096)
    kernel_id = _optional(body, "kernel_id", str, None)
    if kernel_id is not None:
        kernel_id = _check_text(kernel_id, "kernel_id", 128)
    return language, path, kernel_id


def _parse_cells(value: Any, limits: RequestLimits) -> tuple[Cell, ...]:
    if not isinstance(value, list):
        raise _fail(f"'cells' must be a list, not {type(value).__name__}.")
    if not value:
        raise _fail("'cells' is empty.")
    if len(value) > limits.max_cells:
        raise _fail(f"The notebook has too many cells ({len(value)}, limit {limits.max_cells}).", status=413)
    cells: list[Cell] = []
    total = 0
    limit = limits.max_cell_chars
    # The checks inline, and each message formatted only when it is needed: this loop runs
    # for every cell of the notebook on every keystroke.
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _fail(f"cells[{i}] must be an object with 'cell_type' and 'source'.")
        cell_type = item.get("cell_type", "code")
        if cell_type not in CELL_TYPES:
            raise _fail(f"cells[{i}].cell_type must be one of {', '.join(CELL_TYPES)}.")
        source = item.get("source", "")
        if type(source) is not str or len(source) > limit:
            if isinstance(source, list) and all(isinstance(s, str) for s in source):
                source = "".join(source)  # nbformat allows a list of lines
            source = _check_text(source, f"cells[{i}].source", limit)
        total += len(source)
        if total > limits.max_total_chars:
            raise _fail(f"The notebook is too large (over {limits.max_total_chars} characters).", status=413)
        count = item.get("execution_count")
        if count is not None and (type(count) is not int or count < 0):
            raise _fail(f"cells[{i}].execution_count must be a whole number or null.")
        cells.append(Cell(cell_type, source, count, _tags(item.get("metadata"), i)))
    _check_encodable([cell.source for cell in cells], "cells[{}].source")
    return tuple(cells)


def _check_encodable(texts: list[str], name: str) -> None:
    """Lone surrogates survive json.loads but cannot reach a backend: name the first text with one."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for i, text in enumerate(texts):
            _check_text(text, name.format(i), len(text))


def _tags(metadata: Any, i: int) -> tuple[str, ...]:
    """A cell's ``metadata.tags``, as nbformat stores them."""
    if metadata is None:
        return ()
    if not isinstance(metadata, dict):
        raise _fail(f"cells[{i}].metadata must be an object.")
    tags = metadata.get("tags", [])
    if tags is None:
        return ()
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _fail(f"cells[{i}].metadata.tags must be a list of strings.")
    return tuple(tags)


def _notebook_enabled(metadata: Any) -> bool:
    """The notebook's ``metadata.codestral.enabled`` (absent: true)."""
    if metadata is None:
        return True
    if not isinstance(metadata, dict):
        raise _fail("'metadata' must be an object (the notebook's metadata).")
    ours = metadata.get("codestral")
    if ours is None:
        return True
    if not isinstance(ours, dict):
        raise _fail("'metadata.codestral' must be an object, like {\"enabled\": false}.")
    enabled = ours.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail("'metadata.codestral.enabled' must be true or false.")
    return enabled
