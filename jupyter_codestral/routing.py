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
When the cool-down ends, the next request tries it again: that request is
the probe.
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
from .context import FimContext
from .errors import BackendError, CompletionError, backend_error
from .stats import percentile

ROUTE_KINDS = ("line", "block", "comment", "markdown")

# How long a remote backend may take to its first text before the next one takes over.
REMOTE_FIRST_TOKEN_TIMEOUT_MS = 1500.0
COOLDOWN_FIRST_MS = 5000.0
COOLDOWN_MAX_MS = 300_000.0

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


@dataclass
class Health:
    """What the router knows about one backend from its last calls."""

    failures: int = 0
    until: float = 0.0  # monotonic seconds: skipped before then
    until_wall: float | None = None  # the same, as wall-clock seconds (for the status bar)
    last_error: dict[str, Any] | None = None
    served: int = 0
    first_text_ms: list[float] = field(default_factory=list)

    def available(self, now: float) -> bool:
        return now >= self.until

    def succeeded(self, first_text_ms: float) -> None:
        self.failures = 0
        self.until = 0.0
        self.until_wall = None
        self.served += 1
        self.first_text_ms.append(first_text_ms)
        del self.first_text_ms[:-100]

    def failed(self, error: CompletionError, cooldown_ms: float) -> None:
        self.failures += 1
        wait = error.retry_after or min(COOLDOWN_MAX_MS, cooldown_ms * 2 ** (self.failures - 1)) / 1000
        self.until = time.monotonic() + wait
        self.until_wall = time.time() + wait
        self.last_error = {**error.to_json()["error"], "at": time.time()}


class Router(Backend):
    """A backend made of named backends and the routes between them."""

    name = "routed"

    def __init__(self, specs: Mapping[str, RouteSpec], routes: Mapping[str, tuple[str, ...]]) -> None:
        first = next(iter(specs.values()))
        super().__init__(first.settings)
        self.specs = dict(specs)
        self.routes = dict(routes)
        self.backends: dict[str, Backend] = {}
        self.health = {name: Health() for name in specs}
        # Redacted once for all: any backend of the chain may be the one that sends it away.
        self.settings = replace(first.settings, redact_secrets=any(s.settings.redact_secrets for s in specs.values()))
        self.supports_prefetch = False

    def attach(self, backends: Mapping[str, Backend]) -> None:
        self.backends = dict(backends)
        self.supports_prefetch = any(b.supports_prefetch for b in self.backends.values())

    # -- lifetime ----------------------------------------------------------------------
    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()

    # -- serving -----------------------------------------------------------------------
    def _hide_keys(self, text: str) -> str:
        for backend in self.backends.values():
            text = backend.settings.redact(text)
        return text

    async def stream(self, request: FimRequest) -> AsyncGenerator[str, None]:
        chain = self.routes.get(request.route, ())
        if not chain:
            return  # no backend for this kind of completion: nothing to show
        if request.prefetch:
            chain = tuple(n for n in chain if self.backends[n].supports_prefetch)[:1]
            if not chain:
                return
        now = time.monotonic()
        # Backends cooling down are skipped, unless all of them are.
        ready = [name for name in chain if self.health[name].available(now)] or list(chain)
        last_error: CompletionError | None = None
        for name in ready:
            started = time.perf_counter()
            pieces = self.backends[name].stream(request)
            spec = self.specs[name]
            try:
                timeout = spec.first_token_timeout_ms
                first = await asyncio.wait_for(anext(pieces), timeout / 1000 if timeout else None)
            except StopAsyncIteration:
                first = None  # an empty completion is an answer
            except TimeoutError:
                await pieces.aclose()
                last_error = backend_error(
                    "timeout", f"{name} sent no text within {spec.first_token_timeout_ms:.0f} ms."
                )
                self.health[name].failed(last_error, spec.cooldown_ms)
                continue
            except CompletionError as error:
                await pieces.aclose()
                if error.kind == "cancelled":
                    raise
                error.message = self._hide_keys(error.message)
                last_error = error
                self.health[name].failed(error, spec.cooldown_ms)
                continue
            self.health[name].succeeded((time.perf_counter() - started) * 1000)
            request.outcome["backend"] = name
            if last_error is not None:
                request.outcome["fallback_reason"] = last_error.message
            if first is None:
                return
            async with aclosing(pieces):
                yield first
                async for piece in pieces:
                    yield piece
            return
        assert last_error is not None  # the chain is never empty here
        raise BackendError(last_error.kind, last_error.message, last_error.status, last_error.retry_after)

    # -- status ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Ready when some backend of every route can answer now."""
        now = time.monotonic()
        states = {n: self.backends[n].state for n in self.backends}
        usable = {n for n, s in states.items() if s == "ready" and self.health[n].available(now)}
        if all(not chain or usable & set(chain) for chain in self.routes.values()):
            return "ready"
        return "loading" if "loading" in states.values() else "failing"

    @state.setter
    def state(self, value: str) -> None:
        pass  # the router's state is its backends'

    def summary(self) -> dict[str, Any]:
        models = sorted({b.settings.model for b in self.backends.values()})
        return {"backend": self.name, "model": ", ".join(models), "base_url": None}

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        backends = {}
        for name, backend in self.backends.items():
            health = self.health[name]
            ordered = sorted(health.first_text_ms)
            backends[name] = {
                **backend.describe(),
                "kind": backend.settings.backend,
                "state": backend.state if health.available(now) else "cooling_down",
                "skipped_until": health.until_wall if not health.available(now) else None,
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
            "routes": {kind: list(chain) for kind, chain in self.routes.items()},
        }


# -- configuration ----------------------------------------------------------------------


def parse_routes(value: Any, names: set[str]) -> dict[str, tuple[str, ...]]:
    """``{"line": ["embedded"], ...}`` checked against the backends' names; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('routes must be an object like {"line": ["embedded"], "block": ["codestral"]}.')
    routes: dict[str, tuple[str, ...]] = {}
    for kind, chain in value.items():
        if kind not in ROUTE_KINDS:
            raise ValueError(f"Unknown route {kind!r}; routes are {', '.join(ROUTE_KINDS)}.")
        if isinstance(chain, str):
            chain = [chain]
        if not isinstance(chain, list) or not all(isinstance(n, str) for n in chain):
            raise ValueError(f"The route {kind!r} must be a list of backend names.")
        unknown = [n for n in chain if n not in names]
        if unknown:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"The route {kind!r} names unknown backend {unknown[0]!r} (configured: {known}).")
        routes[kind] = tuple(chain)
    return routes
