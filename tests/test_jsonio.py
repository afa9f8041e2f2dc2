"""The fast JSON path accepts and refuses what the standard library does."""

from __future__ import annotations

import json
import re

import pytest

from jupyter_codestral import jsonio
from jupyter_codestral.errors import RequestError
from jupyter_codestral.request import parse_completion_request


@pytest.mark.parametrize(
    "text",
    [
        b'{"cells": [{"source": "df."}], "cursor": 3}',
        b'{"x": NaN, "y": -Infinity}',  # orjson refuses these; json accepts them
        b'{"text": "\\ud800"}',  # a lone surrogate
        '{"text": "caf\u00e9"}'.encode("utf-16"),  # json detects UTF-16
    ],
)
def test_loads_accepts_what_json_accepts(text: bytes) -> None:
    assert repr(jsonio.loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b"{not json", b"", b"\xff\xfe{", b"[" * 100_000])
def test_loads_refuses_what_json_refuses(text: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(text)
    with pytest.raises((ValueError, RecursionError)):
        jsonio.loads(text)


def test_dumps_is_json_whatever_the_value() -> None:
    for value in ({"delta": "x = 'é'\n"}, {"done": True, "timings": {"total_ms": 1.5}}, {"text": "\ud800"}, {1: 2}):
        assert json.loads(jsonio.dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"cells": [{"source": "df."}], "cell_index": 0, "cursor": 123456789012345678901234567890}',
         "'cursor' 123456789012345678901234567890 is out of range"),  # not "must be an integer, not float"
        (b'{"cells": [{"source": "df."}], "cell_index": 0, "cursor": NaN}', "'cursor' must be an integer, not float"),
        (b'{"cells": [{"source": "\\ud800"}], "cell_index": 0, "cursor": 0}', "lone surrogate"),
    ],
)
def test_a_refused_request_is_named_as_the_standard_library_reads_it(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=re.escape(message)):
        parse_completion_request(raw)
