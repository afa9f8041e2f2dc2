"""JSON on the path of every keystroke: orjson where it can, the standard library where it cannot.

Each completion reads the whole notebook, encodes the prompt for the backend, reads the
backend's events and encodes the reply's lines; orjson does each several times faster than
``json`` (``benchmarks/stage_costs.py``: parsing the body).  It is stricter, though:
NaN and lone surrogates are errors to it, so a text it refuses is read again by ``json`` (what
was accepted before still is), and a value it cannot encode is encoded by ``json``.  It reads an
integer beyond 64 bits as a float: a request refused after this reading is read again by
``json``, whose reading its checks name (``request.py``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """``data`` parsed; raises ``ValueError`` (or ``RecursionError``) as :func:`json.loads` does."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:  # (orjson.JSONEncodeError is one) a lone surrogate, a key that is not a string
        return json.dumps(value).encode()
