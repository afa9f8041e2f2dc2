"""Errors that travel to the client as ``{"error": {"kind", "message"}}``.

Every failure the user can see is one of these, so the frontend can show a
readable reason and the handler never has to guess an HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompletionError(Exception):
    """A failure with a machine-readable kind and a sentence for the user."""

    kind: str
    message: str
    status: int = 400
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_json(self) -> dict[str, dict[str, object]]:
        body: dict[str, object] = {"kind": self.kind, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = round(self.retry_after, 3)
        return {"error": body}


class RequestError(CompletionError):
    """The client sent something we cannot use (always a 4xx)."""


@dataclass
class BackendError(CompletionError):
    """The completion backend failed; ``status`` is what we answer with."""

    retryable: bool = False  # the same request may succeed if sent again (a 5xx before any text)


# Backend failure kinds and the status our endpoint answers with.  Auth
# failures are not answered with 401/403: the frontend would take them for
# a problem with the *Jupyter* token.
BACKEND_STATUS = {
    "auth": 502,
    "rejected": 502,
    "rate_limited": 429,
    "timeout": 504,
    "unreachable": 502,
    "bad_reply": 502,
    "server_error": 502,
    "worker_crashed": 503,
    "failed": 502,
    "loading": 503,
    "cancelled": 409,  # superseded by a newer request for the same document
}


def backend_error(kind: str, message: str, retry_after: float | None = None, retryable: bool = False) -> BackendError:
    return BackendError(kind, message, BACKEND_STATUS.get(kind, 502), retry_after, retryable)
