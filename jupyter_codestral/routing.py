"""Several backends at once: which one serves each completion, and who takes over when it fails.

A *route* is an ordered chain of named backends for one kind of completion,
decided on the server from the context (:func:`route_kind`):

- ``line``: code to the right of the cursor, text before it on the line, or
  the user asked for single lines;
- ``block``: an empty or new line, where several lines make sense;
- ``comment``: inside a comment or a docstring;
- ``markdown``: a markdown cell (no completion unless a route is configured).

:class:`Router` is a backend made of backends: it tries the chain in order.
A backend that fails before any text (unreachable, 5xx after its retries,
429, no first text within its ``first_token_timeout_ms``, its model still
loading, its key refused) hands the same request to the next one, and is
skipped for a cool-down (a 429's Retry-After, else a back-off that grows
with each failure) so an outage does not cost every keystroke a timeout.
When the cool-down ends, a probe (a one-token completion of ``x = 1``) asks
the backend in the background; only once it answers do completions go to
it again, so no keystroke waits on a backend that is still down.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from .backends.base import Backend, BackendSettings, FimRequest
from .context import ContextBudget, FimContext
from .errors import BackendError, CompletionError, backend_error
from .stats import percentile
from .usage import Price, UsageLedger

ROUTE_KINDS = ("line", "block", "comment", "markdown")

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

_STRINGS = re.compile(r"""("|')(?:\\.|(?!\1).)*\1""")


def route_kind(context: FimContext, single_line: bool) -> str:
    """The kind of completion wanted at the cursor (see the module's docstring)."""
    if context.language == "markdown":
        return "markdown"
    before_cursor = context.cell_prefix
    if before_cursor.count('"""') % 2 or before_cursor.count("'''") % 2:
        return "comment"  # inside a docstring
    line = context.line_prefix
    if "#" in _STRINGS.sub("", line):
        return "comment"
    if single_line or context.mid_line or line.strip():
        return "line"
    return "block"


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


@dataclass(frozen=True)
class Route:
    """The backends for one kind of completion, in order of preference."""

    backends: tuple[str, ...]
    hedge_ms: float | None = None  # start the next backend too after this long without text


async def _first_piece(pieces: AsyncGenerator[str, None]) -> str | None:
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
    pieces: AsyncGenerator[str, None]
    first: asyncio.Task[str | None]
    started: float  # perf_counter seconds
    deadline: float | None  # monotonic seconds: no text by then, and the next backend takes over

    @classmethod
    def start(cls, name: str, router: Router, request: FimRequest) -> Attempt:
        spec = router.specs[name]
        if spec.budget is not None and request.context_for is not None:
            request = replace(request, context=request.context_for(spec.budget), budget=spec.budget)
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


def no_text(name: str, timeout_ms: float) -> CompletionError:
    return backend_error("timeout", f"{name} sent no text within {timeout_ms:.0f} ms.")


class Router(Backend):
    """A backend made of named backends and the routes between them."""

    name = "routed"

    def __init__(self, specs: Mapping[str, RouteSpec], routes: Mapping[str, Route]) -> None:
        first = next(iter(specs.values()))
        super().__init__(first.settings)
        self.specs = dict(specs)
        self.routes = dict(routes)
        self.backends: dict[str, Backend] = {}
        self.health = {name: Health() for name in specs}
        # Redacted once for all: any backend of the chain may be the one that sends it away.
        self.settings = replace(first.settings, redact_secrets=any(s.settings.redact_secrets for s in specs.values()))
        self.supports_prefetch = False
        self._probes: dict[str, asyncio.Task[None]] = {}

    def attach(self, backends: Mapping[str, Backend]) -> None:
        self.backends = dict(backends)
        for name, backend in self.backends.items():
            backend.label = name
        self.supports_prefetch = any(b.supports_prefetch for b in self.backends.values())

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
    def serve(self, request: FimRequest) -> AsyncGenerator[str, None]:
        return self.stream(request)  # each backend's call is counted, not the router's

    def _hide_keys(self, text: str) -> str:
        for backend in self.backends.values():
            text = backend.settings.redact(text)
        return text

    async def stream(self, request: FimRequest) -> AsyncGenerator[str, None]:
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
        last_error: CompletionError | None = None
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
                        if not isinstance(error, CompletionError) or error.kind == "cancelled":
                            raise error
                        error.message = self._hide_keys(error.message)
                        last_error = self._failed(attempt.name, error, request.ledger)
                    elif attempt.overdue():
                        running.remove(attempt)
                        await attempt.abandon()
                        error = no_text(attempt.name, attempt.spec.first_token_timeout_ms or 0)
                        last_error = self._failed(attempt.name, error, request.ledger)
        finally:
            for attempt in running:  # hedges that lost, or every one when this request was stopped
                await attempt.abandon()
        if winner is None:
            assert last_error is not None  # the chain is never empty here
            raise BackendError(last_error.kind, last_error.message, last_error.status, last_error.retry_after)
        self.health[winner.name].succeeded((time.perf_counter() - winner.started) * 1000)
        request.outcome["backend"] = winner.name
        if last_error is not None:
            request.outcome["fallback_reason"] = last_error.message
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
            request = FimRequest(context=PROBE_CONTEXT, max_tokens=1, route="line", ledger=ledger)
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
    def state(self) -> str:
        """Ready when some backend of every route can answer now."""
        states = {n: self.backends[n].state for n in self.backends}
        usable = {n for n, s in states.items() if s == "ready" and self.health[n].available}
        if all(usable & set(route.backends) for route in self.routes.values()):
            return "ready"
        return "loading" if "loading" in states.values() else "failing"

    @state.setter
    def state(self, value: str) -> None:
        pass  # the router's state is its backends'

    def summary(self) -> dict[str, Any]:
        models = sorted({b.settings.model for b in self.backends.values()})
        return {"backend": self.name, "model": ", ".join(models), "base_url": None}

    def describe(self) -> dict[str, Any]:
        backends = {}
        for name, backend in self.backends.items():
            health = self.health[name]
            ordered = sorted(health.first_text_ms)
            backends[name] = {
                **backend.describe(),
                "kind": backend.settings.backend,
                "state": backend.state if health.available else "cooling_down",
                "skipped_until": None if health.available else health.until_wall,
                "last_error": health.last_error,
                "served": health.served,
                "first_text_ms": {
                    "median": round(percentile(ordered, 0.5), 1) if ordered else None,
                    "p95": round(percentile(ordered, 0.95), 1) if ordered else None,
                },
            }
        return {
            **self.summary(),
            "backends": backends,
            "routes": {kind: list(route.backends) for kind, route in self.routes.items()},
            "hedge_ms": {kind: route.hedge_ms for kind, route in self.routes.items() if route.hedge_ms is not None},
        }


# -- configuration ----------------------------------------------------------------------


def parse_routes(value: Any, names: set[str]) -> dict[str, Route]:
    """``{"line": ["embedded"], "block": {"backends": [...], "hedge_ms": 400}}`` checked against the
    backends' names; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('routes must be an object like {"line": ["embedded"], "block": ["codestral"]}.')
    routes: dict[str, Route] = {}
    for kind, raw in value.items():
        if kind not in ROUTE_KINDS:
            raise ValueError(f"Unknown route {kind!r}; routes are {', '.join(ROUTE_KINDS)}.")
        hedge_ms = None
        chain = raw
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {"backends", "hedge_ms"})
            if unknown:
                raise ValueError(f"The route {kind!r} has unknown setting {unknown[0]!r}; known: backends, hedge_ms.")
            chain, hedge_ms = raw.get("backends"), raw.get("hedge_ms")
            if hedge_ms is not None and (
                isinstance(hedge_ms, bool) or not isinstance(hedge_ms, int | float) or hedge_ms < 0
            ):
                raise ValueError(f"The route {kind!r}: hedge_ms must be a number of milliseconds.")
        if isinstance(chain, str):
            chain = [chain]
        if not isinstance(chain, list) or not all(isinstance(n, str) for n in chain):
            raise ValueError(f"The route {kind!r} must be a list of backend names.")
        if not chain:
            continue  # no backend: no completions of this kind
        unknown = [n for n in chain if n not in names]
        if unknown:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"The route {kind!r} names unknown backend {unknown[0]!r} (configured: {known}).")
        routes[kind] = Route(tuple(chain), None if hedge_ms is None else float(hedge_ms))
    return routes
