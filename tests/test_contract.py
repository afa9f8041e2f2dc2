"""The HTTP contract (``jupyter_codestral/contract/codestral.schema.json``): its vocabulary is the code's, and it
catches what breaks it.  (Every reply of the whole test suite is checked against it: ``contract_check.py``.)"""

from __future__ import annotations

from typing import Any

import pytest
from contract_check import violations

from jupyter_codestral.backends.base import BackendState
from jupyter_codestral.contract import limit, schema
from jupyter_codestral.errors import ErrorKind
from jupyter_codestral.policy import OffScope
from jupyter_codestral.request import RequestLimits
from jupyter_codestral.routes import RouteKind


@pytest.mark.parametrize("enum", [ErrorKind, BackendState, RouteKind, OffScope])
def test_the_contracts_names_are_the_codes(enum: Any) -> None:
    assert schema()["$defs"][enum.__name__]["enum"] == [member.value for member in enum]


def test_the_request_limits_come_from_the_contract() -> None:
    assert RequestLimits().max_tokens == limit("CompleteRequest", "max_tokens", "maximum") == 1024


DONE = {"done": True, "completion": "df.head()", "backend": "mistral", "model": "m", "route": "line",
        "timings": {"first_token_ms": 3.0, "total_ms": 4.0}}


def test_a_field_on_one_side_only_breaks_the_contract() -> None:
    assert violations("StreamEvent", DONE) == []
    assert violations("StreamEvent", {"delta": "x"}) == []
    assert violations("StreamEvent", {**DONE, "surprise": 1})  # a field the contract does not know
    assert violations("StreamEvent", {k: v for k, v in DONE.items() if k != "backend"})  # one it requires
    assert violations("StreamEvent", {**DONE, "route": "paragraph"})  # a name outside the vocabulary
    assert violations("ErrorReply", {"error": {"kind": "oops", "message": "x"}})
    assert violations("CompleteRequest", {"cursor": 0})  # neither cells nor text
    assert violations("CompleteRequest", {"cells": [{"source": "x"}], "cell_index": 0, "cursor": 0}) == []
