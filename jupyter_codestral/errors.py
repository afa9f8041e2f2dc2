"""Errors that travel to the client as ``{"error": {"kind", "message"}}``.

Every failure the user can see is one of these, so the frontend can show a
readable reason and the handler never has to guess an HTTP status.  The
kinds are :class:`ErrorKind`'s (the contract, ``contract/event.schema.json``,
lists them for the frontend).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong, for the frontend to act on (the message says it to the user)."""

    # The request itself (4xx).
    BAD_REQUEST = "bad_request"
    BAD_JSON = "bad_json"
    TOO_LARGE = "too_large"
    USER_RATE_LIMITED = "user_rate_limited"
    POLICY = "policy"  # the course policy refuses completions in this document
    FORBIDDEN = "forbidden"
    HTTP_ERROR = "http_error"
    CANCELLED = "cancelled"  # a newer request for the same document replaced it, or the client left
    # The configuration cannot work.
    CONFIG = "config"
    # The backend.
    AUTH = "auth"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    BAD_REPLY = "bad_reply"
    SERVER_ERROR = "server_error"
    WORKER_CRASHED = "worker_crashed"
    FAILED = "failed"
    LOADING = "loading"
    # Our own bug (500): the log says more.
    INTERNAL = "internal"


@dataclass
class CompletionError(Exception):
    """A failure with a machine-readable kind and a sentence for the user."""

    kind: ErrorKind
    message: str
    status: int = 400
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_json(self) -> dict[str, dict[str, object]]:
        body: dict[str, object] = {"kind": str(self.kind), "message": self.message}
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
    ErrorKind.AUTH: 502,
    ErrorKind.REJECTED: 502,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.UNREACHABLE: 502,
    ErrorKind.BAD_REPLY: 502,
    ErrorKind.SERVER_ERROR: 502,
    ErrorKind.WORKER_CRASHED: 503,
    ErrorKind.FAILED: 502,
    ErrorKind.LOADING: 503,
    ErrorKind.CANCELLED: 409,  # superseded by a newer request for the same document
}


def backend_error(
    kind: ErrorKind, message: str, retry_after: float | None = None, retryable: bool = False
) -> BackendError:
    return BackendError(kind, message, BACKEND_STATUS.get(kind, 502), retry_after, retryable)


def error_kind(value: object) -> ErrorKind:
    """A kind as another process reported it (the embedded worker), or ``failed``."""
    try:
        return ErrorKind(str(value))
    except ValueError:
        return ErrorKind.FAILED
