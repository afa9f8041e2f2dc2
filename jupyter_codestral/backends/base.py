"""The one interface every completion backend implements, and what its stream carries."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from ..context import ContextBudget, FimContext
from ..edit_prompt import ChatMessage
from ..policy import PathPolicy
from ..prompt_source import PromptSource
from ..routes import RouteKind
from ..templates import PromptFormat
from ..usage import Usage, metered

if TYPE_CHECKING:
    from ..usage import UsageLedger

# Waits between retries grow from this many seconds (not a user setting; tests shorten it).
RETRY_BACKOFF = 0.2


class BackendState(StrEnum):
    """What a backend is doing, as ``codestral/status`` says it (the status bar reads it)."""

    IDLE = "idle"  # not started: it starts when a route first needs it
    STARTING = "starting"
    ASSEMBLING = "assembling"  # the embedded model's parts are being put together
    VERIFYING = "verifying"
    LOADING = "loading"
    CHECKING = "checking"  # the embedded model's self-check: a few tokens read and written
    READY = "ready"
    RESTARTING = "restarting"
    ERROR = "error"  # it cannot be used (the reason is in the status)
    FAILED = "failed"  # the embedded model's worker crashed too often in a row: not restarted again
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    UNREACHABLE = "unreachable"
    FAILING = "failing"
    COOLING_DOWN = "cooling_down"  # a named backend skipped after a failure, until a probe finds it back


class Scored(NamedTuple):
    """A piece of the completion with the sum of its tokens' log-probabilities (where the backend reports them)."""

    text: str
    logprob: float
    tokens: int


# What a backend's stream yields: the completion's text, in pieces, and at its end the tokens the call used
# as the backend reported them (Backend.serve counts them, and passes the text on).
Piece = str | Scored
BackendItem = str | Scored | Usage


def piece_text(piece: Piece) -> str:
    return piece if type(piece) is str else piece.text  # type: ignore[union-attr]


@dataclass(frozen=True)
class BackendSettings:
    """Where a backend is and how to talk to it (from the extension's settings, ``assembly.py``)."""

    backend: str
    url: str
    model: str
    api_key: str | None = field(repr=False)
    key_name: str | None  # the variable or setting the key came from, for messages
    prompt: PromptFormat  # for backends that take a raw prompt
    temperature: float
    max_tokens: int
    timeout: float  # seconds to wait for the first byte, or between chunks
    connect_timeout: float
    retries: int  # extra attempts on 5xx before any text arrived
    max_connections: int  # HTTP backends: the connection pool's size
    openai_suffix: bool  # the OpenAI-compatible server accepts "suffix"
    model_path: str | None  # local backend: a GGUF file instead of the bundled model
    model_sha256: str | None  # local backend: what model_path must hash to (checked before loading)
    threads: int | None  # local backend
    cpu_kernels: str  # local backend: llama.cpp's CPU kernels (embedded/cpu.py's Kernels)
    kv_reuse: str  # local backend: what a prompt keeps of the tokens read before (chunks, prefix, off)
    kv_cache_mb: int  # local backend: memory for saved copies of prompts read before
    kv_disk_mb: int  # local backend: disk for the same
    kv_disk_dir: str | None  # local backend: where (None: the cache folder's kv/)
    # local backend: the course policy (its disk holds nothing of the documents the policy refuses)
    course_policy: PathPolicy
    # Credentials in the prompt are replaced before it is sent (redaction.py); off only where
    # prompts never leave the machine (the embedded model) or the user turned it off.
    redact_secrets: bool = True
    # Ask the backend for its tokens' log-probabilities (a suggestion's confidence: min_confidence).
    confidence: bool = False
    retry_backoff: float = RETRY_BACKOFF

    @property
    def layout(self) -> str:
        return self.prompt.layout

    def redact(self, text: str) -> str:
        """Remove the key from any text that might reach a user or a log."""
        return text.replace(self.api_key, "[key hidden]") if self.api_key else text


@dataclass(frozen=True)
class FimRequest:
    """One completion asked of a backend: where its context comes from, and how much to write."""

    source: PromptSource  # the request's text: its context within any budget
    budget: ContextBudget  # the budget this backend's context is built within
    max_tokens: int
    stop: tuple[str, ...] = ()
    prefetch: bool = False  # only read the prompt into the backend's cache; no text wanted
    route: RouteKind = RouteKind.BLOCK  # the kind of completion (routes.route_kind)
    # Where each call to a backend is counted (usage.py).
    ledger: UsageLedger | None = field(default=None, repr=False)
    # An edit: the chat the backend answers instead of filling the middle (edit_prompt.py), and how its
    # answer begins, for a backend that can start the assistant's turn itself.
    chat: tuple[ChatMessage, ...] = ()
    chat_opening: str = ""

    @cached_property
    def context(self) -> FimContext:
        return self.source.context(self.budget)

    @property
    def richer_context(self) -> FimContext:
        """The context of a richer prompt, read in the background (``ContextBudget.richer``)."""
        return self.source.context(self.budget.richer)

    @property
    def next_window(self) -> FimContext | None:
        """The context the earlier cells' window will give at its next step, when that is near (for a
        backend that reads prompts ahead)."""
        return self.source.next_window(self.budget)

    def within(self, budget: ContextBudget) -> FimRequest:
        """The same request for a backend with a context budget of its own."""
        return self if budget == self.budget else replace(self, budget=budget)

    @property
    def prefix(self) -> str:
        return self.context.prefix

    @property
    def suffix(self) -> str:
        return self.context.suffix


class Backend(abc.ABC):
    """Streams the text a model writes between a prefix and a suffix."""

    name: str = ""
    # Whether a prefetch warms a prompt cache (else prefetches are answered at once, unsent).
    supports_prefetch = False

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.label = self.name  # the name users see: the backend's name in the routes, else its kind
        self.state = BackendState.READY
        self.rate_limited_until: float | None = None  # wall-clock seconds

    @abc.abstractmethod
    def stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        """Yield the completion's pieces as they arrive, and at the end the :class:`Usage` the backend
        reported, if it reports any; raise :class:`~jupyter_codestral.errors.BackendError`."""

    @abc.abstractmethod
    def chat_stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        """As :meth:`stream`, for an edit: the answer to ``request.chat`` (the backend's chat API)."""

    def serve(self, request: FimRequest) -> AsyncGenerator[Piece, None]:
        """:meth:`stream`'s text (:meth:`chat_stream`'s for an edit), with the call counted in the request's
        usage ledger."""
        items = self.chat_stream(request) if request.chat else self.stream(request)
        return metered(items, request, self.label)

    async def start(self) -> None:
        """Begin any slow preparation (model loading) without waiting for it."""

    async def aclose(self) -> None:
        """Release connections and processes."""

    def summary(self) -> dict[str, Any]:
        """Who serves completions, in a few fields (for every reply)."""
        return {"backend": self.name, "model": self.settings.model, "base_url": self.settings.url}

    def describe(self) -> dict[str, Any]:
        """All the status says about the backend."""
        return self.summary()
