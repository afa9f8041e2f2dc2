"""Every reply the server writes during the tests, checked against the contract (``jupyter_codestral/contract``)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from jupyter_codestral.contract import shape
from jupyter_codestral.errors import CompletionError
from jupyter_codestral.handlers import CompleteHandler, EditHandler
from jupyter_codestral.service import CompletionService


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(shape(name))


def violations(name: str, value: Any) -> list[str]:
    """Why ``value`` is not a ``name`` of the contract (empty: it is one)."""
    return [f"{name} at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in validator(name).iter_errors(value)]


def check(name: str, value: Any) -> None:
    problems = violations(name, value)
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def replies_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every reply, stream line and status that breaks the contract; the test fails if any did."""
    found: list[str] = []
    streamed, whole, status, to_json = (CompleteHandler._streamed, CompleteHandler._whole, CompletionService.status,
                                        CompletionError.to_json)

    def checked_stream(self: CompleteHandler, event: dict[str, Any]) -> None:
        found.extend(violations("EditStreamEvent" if isinstance(self, EditHandler) else "StreamEvent", event))
        streamed(self, event)

    def checked_whole(self: CompleteHandler, event: dict[str, Any]) -> None:
        if "done" in event:
            reply = "EditReply" if "replacement" in event else "CompleteReply"
            found.extend(violations(reply, {k: v for k, v in event.items() if k != "done"}))
        whole(self, event)

    def checked_status(self: CompletionService, path: str | None = None) -> dict[str, Any]:
        value = status(self, path)
        found.extend(violations("Status", value))
        return value

    def checked_error(self: CompletionError) -> dict[str, dict[str, object]]:
        value = to_json(self)
        found.extend(violations("ErrorReply", value))
        return value

    monkeypatch.setattr(CompleteHandler, "_streamed", checked_stream)
    monkeypatch.setattr(CompleteHandler, "_whole", checked_whole)
    monkeypatch.setattr(CompletionService, "status", checked_status)
    monkeypatch.setattr(CompletionError, "to_json", checked_error)
    yield found
    assert not found, "replies that break the contract:\n" + "\n".join(dict.fromkeys(found))
