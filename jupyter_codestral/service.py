"""The completion service: one per Jupyter server, owned by the extension app.

It takes a parsed request and the user, and owns what is shared between
requests: which request is the newest for a document (superseding, one key:
the user and the document), prefetches, the kernel summary, statistics and
the backend.  The HTTP handlers only adapt it to HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .acceptance import parse_report
from .backends.base import BackendState
from .context import ContextBudget
from .edit_request import EditRequest, parse_edit_request
from .editing import edit_done, run_edit
from .errors import CompletionError, ErrorKind, RequestError
from .kernel_namespace import KernelNamespace
from .kernel_variables import KernelState
from .pipeline import done_event, run_completion
from .policy import COMPLETION, PathPolicy, notebook_off
from .ratelimit import UserRateLimiter
from .request import CompletionRequest, RequestLimits, parse_completion_request
from .router import Completer
from .stats import ServiceStats
from .usage import UsageLedger

Event = dict[str, Any]
Parsed = TypeVar("Parsed", CompletionRequest, EditRequest)
DocumentKey = tuple[str, str]  # (user, document)
SessionPaths = Callable[[str], Awaitable[list[str]]]  # kernel id -> the documents it runs for
Sink = Callable[[Event], None]  # takes each event as it comes (the handler's writer)

SUPERSEDED = CompletionError(ErrorKind.CANCELLED, "A newer request for this document replaced this one.", 409)


@dataclass(frozen=True)
class ServiceLimits:
    max_body_bytes: int
    request: RequestLimits
    # The most tokens any completion may have (a request asking for more gets this many), and a
    # completion's length when the request does not say.
    max_tokens: int
    # Suggestions whose first line's mean token log-probability is lower are not shown (None: all are).
    min_confidence: float | None = None


class Completion:
    """One request being served: its events go to a sink as they come, and it can be stopped.

    The work runs in a task of its own, so that a newer request can stop it whoever is
    waiting for it; :meth:`wait` then raises the reason as a :class:`CompletionError`
    (``cancelled``, 409).  Events go from that task straight into ``sink`` (the handler's
    writer): no queue and no second task to wake for each piece of text.  Without a sink
    the events are read as an async iterator (tests, benchmarks, the command line)."""

    def __init__(
        self,
        request: CompletionRequest | EditRequest,
        events: AsyncGenerator[Event, None],
        sink: Sink | None = None,
        on_done: Callable[[Completion], None] | None = None,
    ) -> None:
        self.request = request
        self._events = events
        self._queue: asyncio.Queue[Event | None] | None = None
        if sink is None:
            self._queue = asyncio.Queue()
            sink = self._queue.put_nowait
        self._sink = sink
        self._on_done = on_done
        self._stopped: CompletionError | None = None
        self._task = asyncio.ensure_future(self._pump())
        if on_done is not None or self._queue is not None:
            self._task.add_done_callback(self._finished)

    async def _pump(self) -> None:
        try:
            async for event in self._events:
                self._sink(event)
        finally:
            await self._events.aclose()

    def _finished(self, _: asyncio.Task[None]) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        if self._on_done is not None:
            self._on_done(self)

    def stop(self, reason: CompletionError = SUPERSEDED) -> None:
        """Stop the work (the backend call is cancelled at once); :meth:`wait` raises ``reason``."""
        if not self._task.done():
            self._stopped = reason
            self._task.cancel()

    @property
    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> None:
        """Until every event has gone to the sink; raises why it stopped early."""
        try:
            await self._task
        except asyncio.CancelledError:
            # Stopped (also before it began): the reason, unless this waiter is being cancelled itself.
            current = asyncio.current_task()
            if self._stopped is None or not self._task.cancelled() or (current and current.cancelling()):
                raise
            raise self._stopped from None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._read()

    async def _read(self) -> AsyncIterator[Event]:
        if self._queue is None:
            raise TypeError("this completion's events go to its sink")
        while (event := await self._queue.get()) is not None:
            yield event
        await self.wait()


async def _only(event: Event) -> AsyncGenerator[Event, None]:
    yield event


class CompletionService:
    def __init__(
        self,
        completer: Completer,
        budget: ContextBudget,
        limits: ServiceLimits,
        rate_limiter: UserRateLimiter,
        kernels: KernelNamespace | None = None,
        policy: PathPolicy | None = None,
        session_paths: SessionPaths | None = None,
        config_error: str | None = None,
        log_prompts: bool = False,
        log: logging.Logger | None = None,
        usage: UsageLedger | None = None,
    ) -> None:
        self.completer = completer
        self.budget = budget
        self.limits = limits
        self.rate_limiter = rate_limiter
        self.kernels = kernels
        self.policy = policy or PathPolicy()
        self.session_paths = session_paths
        self.config_error = config_error
        self.log_prompts = log_prompts
        self.log = log or logging.getLogger(__name__)
        self.stats = ServiceStats()
        self.usage = usage or UsageLedger(chars_per_token=budget.chars_per_token)
        self._latest: dict[DocumentKey, Completion] = {}

    # -- lifetime ------------------------------------------------------------
    async def start(self) -> None:
        """Begin slow preparation (the embedded model loads) without waiting for it."""
        await self.completer.start()

    async def aclose(self) -> None:
        for completion in list(self._latest.values()):
            completion.stop()
        await self.completer.aclose()
        await self.usage.aclose()

    # -- requests ------------------------------------------------------------
    def parse(self, body: bytes, user: str) -> CompletionRequest:
        """The request, or a :class:`CompletionError` saying why it cannot be served."""
        return self._admitted(body, user, parse_completion_request)

    def parse_edit(self, body: bytes, user: str) -> EditRequest:
        """An edit's request, or a :class:`CompletionError` saying why it cannot be served (the same size and
        rate limits as completions)."""
        return self._admitted(body, user, parse_edit_request)

    def _admitted(self, body: bytes, user: str, parser: Callable[[bytes, RequestLimits], Parsed]) -> Parsed:
        limit = self.limits.max_body_bytes
        if len(body) > limit:
            raise RequestError(
                ErrorKind.TOO_LARGE,
                f"The request is {len(body)} bytes; the limit is {limit} (CodestralExtension.max_body_bytes).",
                413,
            )
        request = parser(body, self.limits.request)
        if self.config_error:
            raise CompletionError(ErrorKind.CONFIG, self.config_error, 503)
        wait = self.rate_limiter.check(user)
        if wait > 0:
            raise CompletionError(
                ErrorKind.USER_RATE_LIMITED,
                f"You have sent too many completion requests; try again in {math.ceil(wait)} s.",
                429,
                wait,
            )
        return request

    def record_acceptance(self, body: bytes) -> None:
        """A report of what the user did with the suggestions shown (``acceptance.parse_report``)."""
        self.usage.record_acceptance(parse_report(body))

    def dropped(self) -> None:
        """A request whose client left before it was served."""
        self.stats.cancelled += 1

    def serve(self, request: CompletionRequest, user: str, sink: Sink | None = None) -> Completion:
        """Start serving ``request``; the newest request per user and document wins.

        A newer request stops the one in flight at once (its reader gets 409),
        even when the browser's abort of the old one is late or lost on the way.
        A prefetch only warms a cache: it never stops a completion the user
        is waiting for, and where the backend keeps no prompt cache it costs
        nothing."""
        key = (user, request.document_id)
        if self._prefetch_skipped(key, request):
            return Completion(request, _only(self._unsent({"prefetch_skipped": True})), sink)
        return self._newest(
            key, request, self._served(request, self._completion_refusal, self._completion_events), sink
        )

    def serve_edit(self, request: EditRequest, user: str, sink: Sink | None = None) -> Completion:
        """Start serving an edit; as for completions, the newest edit per user and document wins (a new edit
        of the document stops the one in flight: the user asked for another), and a prefetch only warms a
        cache."""
        key = (user, request.document_id)
        if self._prefetch_skipped(key, request):
            return Completion(request, _only(self._unsent_edit(request)), sink)
        return self._newest(key, request, self._served(request, self._edit_refusal, self._edit_events), sink)

    def _prefetch_skipped(self, key: DocumentKey, request: CompletionRequest | EditRequest) -> bool:
        """Whether ``request`` is a prefetch not worth making: the backend keeps no prompt cache, or a request
        the user waits for is in flight for the document."""
        older = self._latest.get(key)
        return request.prefetch and (
            not self.completer.supports_prefetch
            or (older is not None and not older.done and not older.request.prefetch)
        )

    def _newest(
        self,
        key: DocumentKey,
        request: CompletionRequest | EditRequest,
        events: AsyncGenerator[Event, None],
        sink: Sink | None,
    ) -> Completion:
        """Serve ``events`` as the newest request for ``key``: the one in flight there is stopped."""
        older = self._latest.get(key)
        if older is not None:
            older.stop()
        completion = Completion(request, events, sink, partial(self._forget, key))
        self._latest[key] = completion
        return completion

    def _forget(self, key: DocumentKey, completion: Completion) -> None:
        if self._latest.get(key) is completion:
            del self._latest[key]

    async def _policy_refusal(
        self, request: CompletionRequest, what: str = "Completions", kind: str = COMPLETION
    ) -> str | None:
        """Why the course policy refuses ``kind`` for ``request`` (for its document, or the one its kernel
        runs for)."""
        if not self.policy.active:
            return None
        paths: list[str | None] = [request.path]
        if request.kernel_id and self.session_paths is not None:
            paths.extend(await self.session_paths(request.kernel_id))
        return self.policy.reason(paths, what, kind)

    async def _completion_refusal(self, request: CompletionRequest) -> Event | None:
        """Raises the course policy's refusal; the event that answers a completion the notebook turned off."""
        refusal = await self._policy_refusal(request)
        if refusal:
            self.stats.refused += 1
            raise CompletionError(ErrorKind.POLICY, refusal, 403)
        off = notebook_off(request)
        if off:
            # The notebook's author turned completions off here: nothing is sent anywhere.
            self.stats.refused += 1
            return {**self._unsent({"off": True}), "off": off.message, "off_scope": str(off.scope)}
        return None

    async def _edit_refusal(self, request: EditRequest) -> Event | None:
        """Raises why the course policy, the notebook or the cell refuses an edit (an edit asked for where it is
        off is an error, not an empty suggestion)."""
        at_range = request.at_range()
        off = notebook_off(at_range, "Edits")
        what = f"{request.kind.capitalize()} edits"
        refusal = await self._policy_refusal(at_range, what, request.kind) or (off.message if off else None)
        if refusal:
            self.stats.refused += 1
            raise CompletionError(ErrorKind.POLICY, refusal, 403)
        return None

    async def _kernel_state(self, request: CompletionRequest | EditRequest) -> KernelState | None:
        """What the request's kernel has told about its variables, as of the cells' last runs."""
        if not request.kernel_id or self.kernels is None:
            return None
        runs = [c.execution_count for c in request.cells if c.execution_count is not None]
        return await self.kernels.state(request.kernel_id, max(runs, default=None))

    def _completion_events(self, request: CompletionRequest, kernel: KernelState | None) -> AsyncGenerator[Event, None]:
        return run_completion(
            request,
            self.completer,
            self.budget,
            max_tokens=self.limits.max_tokens,
            kernel=kernel,
            ledger=self.usage,
            min_confidence=self.limits.min_confidence,
        )

    def _edit_events(self, request: EditRequest, kernel: KernelState | None) -> AsyncGenerator[Event, None]:
        return run_edit(request, self.completer, self.budget, kernel=kernel, ledger=self.usage)

    async def _served(
        self,
        request: Parsed,
        refused: Callable[[Parsed], Awaitable[Event | None]],
        events_of: Callable[[Parsed, KernelState | None], AsyncGenerator[Event, None]],
    ) -> AsyncGenerator[Event, None]:
        """A request's events once the policy allows it (``refused`` raises, or gives the event that answers
        it instead), counted in the statistics; its failures logged (without keys)."""
        answer = await refused(request)
        if answer is not None:
            yield answer
            return
        try:
            kernel = await self._kernel_state(request)
            async for event in events_of(request, kernel):
                if "done" in event:
                    self.stats.record(event["timings"])
                    if self.log_prompts:
                        self.log.info("codestral: %r", event.get("completion", event.get("replacement")))
                yield event
        except CompletionError as error:
            if error.kind == ErrorKind.CANCELLED:
                self.stats.cancelled += 1  # a newer request for the same document replaced it
            else:
                self.stats.record_error(error)
                self.log.warning("codestral: %s", self.completer.redact(str(error)))
            raise
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise

    def _unsent(self, timings: dict[str, Any]) -> Event:
        """The done event of a request answered without asking a backend."""
        return done_event("", self.completer.summary(), timings=timings)

    def _unsent_edit(self, request: EditRequest) -> Event:
        """An edit's done event when no backend was asked (a prefetch skipped): the range unchanged."""
        return edit_done(request, request.selected, self.completer.summary(), {"prefetch_skipped": True})

    def in_flight(self) -> int:
        """Requests being served now (at most one per user and document)."""
        return len(self._latest)

    # -- status --------------------------------------------------------------
    def status(self, path: str | None = None) -> dict[str, Any]:
        """The service's state; with ``path``, whether the course policy allows completions there."""
        completer = self.completer
        state = BackendState.ERROR if self.config_error else completer.state
        return {
            **completer.describe(),
            "state": str(state),
            "ready": state == BackendState.READY,
            "config_error": self.config_error,
            "last_error": self.stats.last_error,
            "latency": self.stats.to_json(),
            "budget": {"prefix_tokens": self.budget.prefix_tokens, "suffix_tokens": self.budget.suffix_tokens},
            "max_tokens": self.limits.max_tokens,
            "redaction": {"on": completer.redact_secrets, "redacted": self.stats.redacted},
            "usage": self.usage.day(),
            **({"policy": self._path_status(path)} if path is not None else {}),
        }

    def _path_status(self, path: str) -> dict[str, Any]:
        reason = self.policy.reason([path])
        return {"path": path, "allowed": reason is None, "reason": reason, "off_kinds": self.policy.kinds_refused(path)}
