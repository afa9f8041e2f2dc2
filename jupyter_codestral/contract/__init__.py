"""The HTTP contract between the server extension and its frontend, written once: ``codestral.schema.json``.

It describes the body of ``POST codestral/complete``, the reply and each line of its stream, and the
object ``GET codestral/status`` returns.  The Python tests validate every reply they see against it;
the frontend's types (``labextension/src/contract.ts``) are generated from it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("codestral.schema.json")


@cache
def schema() -> dict[str, Any]:
    """The whole contract (its shapes are under ``$defs``)."""
    value: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return value


def shape(name: str) -> dict[str, Any]:
    """One shape of the contract (``CompleteRequest``, ``StreamEvent``, ``Status``...) as a schema of its own."""
    whole = schema()
    return {"$schema": whole["$schema"], "$defs": whole["$defs"], "$ref": f"#/$defs/{name}"}


def limit(name: str, field: str, keyword: str) -> Any:
    """A bound the contract sets on a field (e.g. the most ``max_tokens`` a request may ask for)."""
    return schema()["$defs"][name]["properties"][field][keyword]
