"""What users did with the suggestions they were shown: counted in the browser, reported to the server
(``POST codestral/acceptance``), kept per day, backend and route by the usage ledger.

The figures that tell a user, or a teacher, whether completions help.  They never leave the server;
they are written to disk only with ``usage_file``.  Pure values and parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from . import jsonio
from .errors import ErrorKind, RequestError
from .routes import ROUTE_NAMES
from .validation import is_non_negative

# A report's limits: the browser sends one every few seconds, of a few rows.
MAX_REPORT_BYTES = 64 * 1024
MAX_ROWS = 200
MAX_COUNT = 1_000_000


@dataclass
class Acceptance:
    """Counts of suggestions and what became of them."""

    shown: int = 0  # suggestions the user saw
    accepted: int = 0  # accepted whole (Tab)
    accepted_word: int = 0  # accepts of their next word (a suggestion may count several)
    accepted_line: int = 0  # accepts of their next line
    dismissed: int = 0  # dismissed (Escape) or typed over
    chars_accepted: int = 0  # characters the accepts inserted

    def add(self, other: Acceptance) -> None:
        for name in ACCEPTANCE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, Any]:
        figures: dict[str, Any] = {name: getattr(self, name) for name in ACCEPTANCE_FIELDS}
        figures["rate"] = round(self.accepted / self.shown, 4) if self.shown else None
        return figures


ACCEPTANCE_FIELDS = tuple(f.name for f in fields(Acceptance))


@dataclass(frozen=True)
class Row:
    """One row of a report: the counts for suggestions of one backend and one route."""

    backend: str
    route: str
    counts: Acceptance


def _fail(message: str) -> RequestError:
    return RequestError(ErrorKind.BAD_REQUEST, message, 400)


def parse_report(raw: bytes) -> list[Row]:
    """``{"rows": [{"backend", "route", "shown", "accepted", ...}]}``; RequestError says what is wrong."""
    if len(raw) > MAX_REPORT_BYTES:
        raise RequestError(ErrorKind.TOO_LARGE, f"The report is larger than {MAX_REPORT_BYTES} bytes.", 413)
    try:
        body = jsonio.loads(raw)
    except ValueError:
        raise RequestError(ErrorKind.BAD_JSON, "The report is not valid JSON.", 400) from None
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        raise _fail("The report must be an object with a list of 'rows'.")
    rows = body["rows"]
    if len(rows) > MAX_ROWS:
        raise RequestError(ErrorKind.TOO_LARGE, f"The report has more than {MAX_ROWS} rows.", 413)
    parsed = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _fail(f"rows[{i}] must be an object.")
        unknown = sorted(set(row) - {"backend", "route", *ACCEPTANCE_FIELDS})
        if unknown:
            raise _fail(f"rows[{i}] has an unknown field {unknown[0]!r}.")
        backend, route = row.get("backend"), row.get("route")
        if not isinstance(backend, str) or not backend or len(backend) > 128:
            raise _fail(f"rows[{i}].backend must be a backend's name.")
        if route not in ROUTE_NAMES:
            raise _fail(f"rows[{i}].route must be one of {', '.join(sorted(ROUTE_NAMES))}.")
        counts = {}
        for name in ACCEPTANCE_FIELDS:
            value = row.get(name, 0)
            if not is_non_negative(value) or not isinstance(value, int) or value > MAX_COUNT:
                raise _fail(f"rows[{i}].{name} must be a whole number from 0 to {MAX_COUNT}.")
            counts[name] = value
        parsed.append(Row(backend, route, Acceptance(**counts)))
    return parsed
