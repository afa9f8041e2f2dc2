"""JSON on the path of every keystroke: orjson where it can, the standard library where it cannot.

Each completion encodes the prompt for the backend, decodes the backend's events and encodes the
reply's lines; orjson does each several times faster than ``json`` (the prompt: 1 µs against
13).  It is stricter, though: NaN and lone surrogates are errors to it, so a text it refuses is
read again by ``json`` (what was accepted before still is), and a value it cannot encode is
encoded by ``json``.  It reads an integer beyond 64 bits as a float, which is why the request
itself, whose checks name such a number, is still read by ``json`` (``request.py``).
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
