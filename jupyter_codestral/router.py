"""What serves a completion: one backend (:class:`Direct`), or named backends along routes (:class:`Router`).

The service asks a :class:`Completer`; its stream begins with :class:`Answered`
(which backend answers, and why not the first of its route), then the text.

:class:`Router` tries a route's chain in order.  A backend that fails before
any text (unreachable, 5xx after its retries, 429, no first text within its
``first_token_timeout_ms``, its model still loading, its key refused) hands
the same request to the next one, and is skipped for a cool-down (a 429's
Retry-After, else a back-off that grows with each failure) so an outage does
not cost every keystroke a timeout.  When the cool-down ends, a probe (a
one-token completion of ``x = 1``) asks the backend in the background; only
once it answers do completions go to it again, so no keystroke waits on a
backend that is still down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backends.base import Backend, BackendSettings, BackendState, FimRequest, Piece
from .context import ContextBudget, FimContext
from .errors import BackendError, CompletionError, ErrorKind, backend_error
from .prompt_source import PromptSource
from .routes import Route, RouteKind
from .stats import median, percentile
from .usage import Price, UsageLedger

# How long a remote backend may take to its first text before the next one takes over.
REMOTE_FIRST_TOKEN_TIMEOUT_MS = 1500.0
COOLDOWN_FIRST_MS = 5000.0
COOLDOWN_MAX_MS = 300_000.0

# What a probe asks a backend that failed: the smallest completion there is.
PROBE_CONTEXT = FimContext(
    before="",
    cell_prefix="x = 1\ny = ",
    cell_suffix="",
    after="",
    language="python",
    is_notebook=False,
    cells_before=0,
    cells_after=0,
)

# How long a probe of a backend without a first-token timeout (the embedded model) may take.
PROBE_TIMEOUT_MS = 30_000.0


@dataclass(frozen=True)
class Answered:
    """Who answers a completion: the first item of a completer's stream."""

    backend: str
    model: str
    fallback_reason: str | None = None  # why the backends before it in the route did not


class Completer(Protocol):
    """What the completion service asks for a completion (and its state)."""

    supports_prefetch: bool
    redact_secrets: bool  # prompts are redacted before any backend of it sees them

    @property
    def state(self) -> BackendState: ...

    def serve(self, request: FimRequest) -> AsyncGenerator[Answered | Piece, None]: ...

    def redact(self, text: str) -> str: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def summary(self) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...


class Direct:
    """One backend serves every completion."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.supports_prefetch = backend.supports_prefetch
        self.redact_secrets = backend.settings.redact_secrets

    @property
    def state(self) -> BackendState:
        return self.backend.state

    async def serve(self, request: FimRequest) -> AsyncGenerator[Answered | Piece, None]:
        yield Answered(self.backend.label, self.backend.settings.model)
        async with aclosing(self.backend.serve(request)) as pieces:
            async for piece in pieces:
                yield piece

    def redact(self, text: str) -> str:
        return self.backend.settings.redact(text)

    async def start(self) -> None:
        await self.backend.start()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def summary(self) -> dict[str, Any]:
        return self.backend.summary()

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "layout": self.backend.settings.layout,
            "rate_limited_until": self.backend.rate_limited_until,
        }


@dataclass(frozen=True)
class RouteSpec:
    """One named backend of ``CodestralExtension.backends``: its settings and the router's."""

    name: str
    settings: BackendSettings
    first_token_timeout_ms: float | None  # None: wait as long as the backend's own timeout
    cooldown_ms: float = COOLDOWN_FIRST_MS
    price: Price | None = None  # per million tokens, for the usage table
    budget: ContextBudget | None = None  # a context budget of its own (None: the extension's)


@dataclass
class Health:
    """What the router knows about one backend from its last calls."""

    failures: int = 0
    # Monotonic seconds: when the next probe asks the failed backend; 0 while it is in use (it is
    # skipped from its failure until a probe finds it answering again).
    until: float = 0.0
    until_wall: float | None = None  # the same, as wall-clock seconds (for the status bar)
    last_error: dict[str, Any] | None = None
    served: int = 0
    first_text_ms: list[float] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.until == 0.0

    def recovered(self) -> None:
        self.failures = 0
        self.until = 0.0
        self.until_wall = None

    def succeeded(self, first_text_ms: float) -> None:
        self.recovered()
        self.served += 1
        self.first_text_ms.append(first_text_ms)
        del self.first_text_ms[:-100]

    def failed(self, error: CompletionError, cooldown_ms: float) -> None:
        self.failures += 1
        wait = error.retry_after or min(COOLDOWN_MAX_MS, cooldown_ms * 2 ** (self.failures - 1)) / 1000
        self.until = time.monotonic() + wait
        self.until_wall = time.time() + wait
        self.last_error = {**error.to_json()["error"], "at": time.time()}


async def _first_piece(pieces: AsyncGenerator[Piece, None]) -> Piece | None:
    """The stream's first piece (None: it ended without text)."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None


@dataclass
class Attempt:
    """One backend of a route working on the request, and the wait for its first text."""

    name: str
    spec: RouteSpec
    pieces: AsyncGenerator[Piece, None]
    first: asyncio.Task[Piece | None]
    started: float  # perf_counter seconds
    deadline: float | None  # monotonic seconds: no text by then, and the next backend takes over

    @classmethod
    def start(cls, name: str, router: Router, request: FimRequest) -> Attempt:
        spec = router.specs[name]
        if spec.budget is not None:
            request = request.within(spec.budget)
        pieces = router.backends[name].serve(request)
        timeout = spec.first_token_timeout_ms
        return cls(
            name,
            spec,
            pieces,
            asyncio.ensure_future(_first_piece(pieces)),
            time.perf_counter(),
            time.monotonic() + timeout / 1000 if timeout else None,
        )

    def overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    async def abandon(self) -> None:
        """Stop it at once: the backend's call is cancelled (an HTTP backend's connection closed)."""
        self.first.cancel()
        await asyncio.wait([self.first])
        await self.pieces.aclose()


def all_failed(failures: list[tuple[str, CompletionError]]) -> BackendError:
    """Every backend of a route failed: the first one's failure (the route's preferred backend, what the
    user most likely has to fix), with what the others said."""
    _, first = failures[0]
    others = "; ".join(f"{name}: {error.message}" for name, error in failures[1:])
    message = f"{first.message} (then {others})" if others else first.message
    return BackendError(first.kind, message, first.status, first.retry_after)


def no_text(name: str, timeout_ms: float) -> CompletionError:
    return backend_error(ErrorKind.TIMEOUT, f"{name} sent no text within {timeout_ms:.0f} ms.")


class Router:
    """Named backends and the routes between them."""

    def __init__(
        self, specs: Mapping[str, RouteSpec], routes: Mapping[RouteKind, Route], backends: Mapping[str, Backend]
    ) -> None:
        self.specs = dict(specs)
        self.routes = dict(routes)
        self.backends = dict(backends)
        for name, backend in self.backends.items():
            backend.label = name
        self.health = {name: Health() for name in specs}
        # Redacted once for all: any backend of the chain may be the one that sends it away.
        self.redact_secrets = any(s.settings.redact_secrets for s in self.specs.values())
        self.supports_prefetch = any(b.supports_prefetch for b in self.backends.values())
        self._probes: dict[str, asyncio.Task[None]] = {}

    # -- lifetime ----------------------------------------------------------------------
    async def start(self) -> None:
        # Backends that only stand in for another start when first needed (the embedded model
        # behind Codestral loads only if Codestral fails).
        leading = {route.backends[0] for route in self.routes.values()}
        for name in leading:
            await self.backends[name].start()

    async def aclose(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        for backend in self.backends.values():
            await backend.aclose()

    # -- serving -----------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` without any of the backends' keys."""
        for backend in self.backends.values():
            text = backend.settings.redact(text)
        return text

    async def serve(self, request: FimRequest) -> AsyncGenerator[Answered | Piece, None]:
        route = self.routes.get(request.route)
        if route is None:
            return  # no backend for this kind of completion: nothing to show
        chain = route.backends
        if request.prefetch:
            chain = tuple(n for n in chain if self.backends[n].supports_prefetch)[:1]
            if not chain:
                return
        # Backends cooling down are skipped, unless all of them are.
        waiting = [name for name in chain if self.health[name].available] or list(chain)
        running: list[Attempt] = []
        winner: Attempt | None = None
        failures: list[tuple[str, CompletionError]] = []  # the backends that failed, in turn
        hedge_at: float | None = None  # when the next backend starts too, if the running ones are silent
        try:
            while winner is None:
                if not running or (hedge_at is not None and time.monotonic() >= hedge_at):
                    if waiting:
                        running.append(Attempt.start(waiting.pop(0), self, request))
                        hedge_ms = route.hedge_ms if waiting else None
                        hedge_at = None if hedge_ms is None else time.monotonic() + hedge_ms / 1000
                    elif running:
                        hedge_at = None
                    else:
                        break  # every backend of the chain failed
                deadlines = [a.deadline for a in running if a.deadline is not None]
                deadlines += [hedge_at] if hedge_at is not None else []
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                await asyncio.wait([a.first for a in running], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for attempt in list(running):
                    if attempt.first.done():
                        running.remove(attempt)
                        error = attempt.first.exception()
                        if error is None:
                            winner = attempt  # its first text (or an empty completion: also an answer)
                            break
                        await attempt.pieces.aclose()
                        if not isinstance(error, CompletionError) or error.kind == ErrorKind.CANCELLED:
                            raise error
                        error.message = self.redact(error.message)
                        failures.append((attempt.name, self._failed(attempt.name, error, request.ledger)))
                    elif attempt.overdue():
                        running.remove(attempt)
                        await attempt.abandon()
                        error = no_text(attempt.name, attempt.spec.first_token_timeout_ms or 0)
                        failures.append((attempt.name, self._failed(attempt.name, error, request.ledger)))
        finally:
            for attempt in running:  # hedges that lost, or every one when this request was stopped
                await attempt.abandon()
        if winner is None:
            raise all_failed(failures)  # (the chain is never empty here)
        self.health[winner.name].succeeded((time.perf_counter() - winner.started) * 1000)
        yield Answered(winner.name, winner.spec.settings.model, failures[-1][1].message if failures else None)
        async with aclosing(winner.pieces):
            first = winner.first.result()
            if first is None:
                return
            yield first
            async for piece in winner.pieces:
                yield piece

    def _failed(self, name: str, error: CompletionError, ledger: UsageLedger | None) -> CompletionError:
        """Skip ``name`` from now on, until a probe (counted in ``ledger``) finds it answering again."""
        self.health[name].failed(error, self.specs[name].cooldown_ms)
        if name not in self._probes or self._probes[name].done():
            self._probes[name] = asyncio.ensure_future(self._probe(name, ledger))
        return error

    # -- bringing a failed backend back ---------------------------------------------------
    async def _probe(self, name: str, ledger: UsageLedger | None) -> None:
        """At the end of each cool-down, a one-token completion; the backend is back once it answers."""
        health, spec = self.health[name], self.specs[name]
        timeout_ms = spec.first_token_timeout_ms or PROBE_TIMEOUT_MS
        while True:
            await asyncio.sleep(max(0.0, health.until - time.monotonic()))
            request = FimRequest(
                PromptSource.of(PROBE_CONTEXT), ContextBudget(), max_tokens=1, route=RouteKind.LINE, ledger=ledger
            )
            try:
                async with asyncio.timeout(timeout_ms / 1000), aclosing(self.backends[name].serve(request)) as pieces:
                    async for _ in pieces:
                        break
            except CompletionError as error:
                health.failed(error, spec.cooldown_ms)
                continue
            except TimeoutError:
                health.failed(no_text(name, timeout_ms), spec.cooldown_ms)
                continue
            health.recovered()
            return

    # -- status ------------------------------------------------------------------------
    @property
    def state(self) -> BackendState:
        """Ready when some backend of every route can answer now."""
        states = {n: self.backends[n].state for n in self.backends}
        usable = {n for n, s in states.items() if s == BackendState.READY and self.health[n].available}
        if all(usable & set(route.backends) for route in self.routes.values()):
            return BackendState.READY
        return BackendState.LOADING if BackendState.LOADING in states.values() else BackendState.FAILING

    def summary(self) -> dict[str, Any]:
        models = sorted({b.settings.model for b in self.backends.values()})
        return {"backend": "routed", "model": ", ".join(models), "base_url": None}

    def describe(self) -> dict[str, Any]:
        backends = {}
        for name, backend in self.backends.items():
            health = self.health[name]
            ordered = sorted(health.first_text_ms)
            # A backend that cannot be used says so, rather than that it waits for a probe.
            state = backend.state
            if not health.available and state not in (BackendState.FAILED, BackendState.ERROR):
                state = BackendState.COOLING_DOWN
            backends[name] = {
                **backend.describe(),
                "kind": backend.settings.backend,
                "state": str(state),
                "skipped_until": None if health.available else health.until_wall,
                "last_error": health.last_error,
                "served": health.served,
                "first_text_ms": {
                    "median": round(median(ordered), 1) if ordered else None,
                    "p95": round(percentile(ordered, 0.95), 1) if ordered else None,
                },
            }
        first = next(iter(self.specs.values())).settings
        return {
            **self.summary(),
            "layout": first.layout,
            "rate_limited_until": None,
            "backends": backends,
            "routes": {str(kind): list(route.backends) for kind, route in self.routes.items()},
            "hedge_ms": {
                str(kind): route.hedge_ms for kind, route in self.routes.items() if route.hedge_ms is not None
            },
        }
