"""request → context → backend stream → postprocess → events.

:func:`run_completion` is the whole data flow for one request.  It yields
``{"delta": str}`` events as visible text arrives and ends with one
``{"done": True, "completion": str, "timings": {...}}``; failures are raised
as :class:`~jupyter_codestral.errors.CompletionError`.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Backend, FimRequest
from .context import ContextBudget, FimContext, build_context, cell_marker, estimate_tokens
from .errors import CompletionError
from .postprocess import CompletionFilter, options_for
from .request import CompletionRequest


def stop_sequences(context: FimContext, single_line: bool) -> tuple[str, ...]:
    """Strings at which the backend itself should stop, to save its time."""
    stops: list[str] = []
    if context.is_notebook:
        stops.append("\n" + cell_marker(context.language))  # the next cell begins
    if single_line and context.line_prefix.strip():
        stops.append("\n")
    return tuple(stops)


async def _no_text() -> AsyncIterator[str]:
    return
    yield  # makes this an async generator


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of already sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def run_completion(
    request: CompletionRequest,
    backend: Backend,
    budget: ContextBudget,
    max_tokens: int,
    namespace: str = "",
) -> AsyncIterator[dict[str, Any]]:
    start = time.perf_counter()
    context = build_context(request, budget, namespace)
    options = options_for(context, single_line=request.single_line)
    fim = FimRequest(
        context=context,
        max_tokens=0 if request.prefetch else (request.max_tokens or max_tokens),
        stop=stop_sequences(context, options.single_line),
        document_id=request.document_id,
    )
    completion = CompletionFilter(options)
    context_done = time.perf_counter()
    first_text: float | None = None

    # A prefetch only makes sense where the backend keeps a prompt cache.
    source = _no_text() if request.prefetch and not backend.supports_prefetch else backend.stream(fim)
    async with aclosing(source) as pieces:
        async for piece in pieces:
            delta = completion.feed(piece)
            if delta:
                first_text = first_text or time.perf_counter()
                yield {"delta": delta}
            if completion.finished:
                break  # leaving the block closes the backend stream
    delta = completion.finish()
    if delta:
        first_text = first_text or time.perf_counter()
        yield {"delta": delta}
    end = time.perf_counter()
    yield {
        "done": True,
        "completion": completion.text,
        "timings": {
            "context_ms": _ms(context_done - start),
            "first_token_ms": _ms((first_text or end) - start),
            "total_ms": _ms(end - start),
            "prompt_tokens_estimate": estimate_tokens(context.prefix + context.suffix, budget.chars_per_token),
            "cells_before": context.cells_before,
            "cells_after": context.cells_after,
            "kernel_summary": bool(context.namespace),
        },
    }


@dataclass
class ServiceStats:
    """Recent latencies and the last error, for ``codestral/status``."""

    window: int = 200
    total_ms: deque[float] = field(default_factory=deque)
    first_token_ms: deque[float] = field(default_factory=deque)
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    last_error: dict[str, Any] | None = None

    def record(self, timings: dict[str, float]) -> None:
        self.served += 1
        for name in ("total_ms", "first_token_ms"):
            values: deque[float] = getattr(self, name)
            values.append(timings[name])
            while len(values) > self.window:
                values.popleft()

    def record_error(self, error: CompletionError) -> None:
        self.failed += 1
        self.last_error = {**error.to_json()["error"], "at": time.time()}

    @staticmethod
    def _summary(values: deque[float]) -> dict[str, float | None]:
        if not values:
            return {"median": None, "p95": None, "last": None}
        ordered = sorted(values)
        p95 = percentile(ordered, 0.95)
        return {"median": round(statistics.median(ordered), 1), "p95": round(p95, 1), "last": values[-1]}

    def to_json(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "total_ms": self._summary(self.total_ms),
            "first_token_ms": self._summary(self.first_token_ms),
        }
