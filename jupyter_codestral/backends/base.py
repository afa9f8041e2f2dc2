"""The one interface every completion backend implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..context import ContextBudget, FimContext
from ..templates import PromptFormat
from ..usage import Usage, metered

if TYPE_CHECKING:
    from ..usage import UsageLedger

# Waits between retries grow from this many seconds (not a user setting; tests shorten it).
RETRY_BACKOFF = 0.2


@dataclass(frozen=True)
class BackendSettings:
    """Where a backend is and how to talk to it (from the extension's settings, ``config.py``)."""

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
    kv_cache: bool  # local backend: reuse what the model read across requests
    kv_cache_mb: int  # local backend: memory for saved copies of prompts read before
    # Credentials in the prompt are replaced before it is sent (redaction.py); off only where
    # prompts never leave the machine (the embedded model) or the user turned it off.
    redact_secrets: bool = True
    retry_backoff: float = RETRY_BACKOFF

    @property
    def layout(self) -> str:
        return self.prompt.layout

    def redact(self, text: str) -> str:
        """Remove the key from any text that might reach a user or a log."""
        return text.replace(self.api_key, "[key hidden]") if self.api_key else text


@dataclass(frozen=True)
class FimRequest:
    context: FimContext
    max_tokens: int
    stop: tuple[str, ...] = ()
    prefetch: bool = False  # only read the prompt into the backend's cache; no text wanted
    route: str = "block"  # the kind of completion (routing.route_kind), for backends that route
    # Filled in by a routing backend: which backend answered (and why not the first).
    outcome: dict[str, str] = field(default_factory=dict)
    # Where each call to a backend is counted (usage.py), and the figures the backend reported
    # for this call (each call gets its own, Backend.serve).
    ledger: UsageLedger | None = field(default=None, repr=False)
    usage: Usage = field(default_factory=Usage, repr=False)
    # The budget ``context`` was built within, and the same request's context within
    # another budget (for a routed backend with its own, and the adaptive layout's richer prompt).
    budget: ContextBudget | None = field(default=None, repr=False)
    context_for: Callable[[ContextBudget], FimContext] | None = field(default=None, repr=False)

    def context_in(self, window: str) -> FimContext:
        """The same request's context with its earlier cells in another window (``context.WINDOWS``);
        ``context`` itself when it is in that window or no other can be built."""
        if self.budget is None or self.context_for is None or window == self.budget.window:
            return self.context
        return self.context_for(self.budget.in_window(window))

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
        self.state = "ready"
        self.rate_limited_until: float | None = None  # wall-clock seconds

    @abc.abstractmethod
    def stream(self, request: FimRequest) -> AsyncGenerator[str, None]:
        """Yield pieces of the completion as they arrive; raise :class:`~jupyter_codestral.errors.BackendError`.

        Where the backend reports the tokens a call used, put them in ``request.usage``."""

    def serve(self, request: FimRequest) -> AsyncGenerator[str, None]:
        """:meth:`stream`, with the call counted in the request's usage ledger."""
        call = replace(request, usage=Usage())
        return metered(self.stream(call), call, self.label)

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
