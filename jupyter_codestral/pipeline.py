"""request → context → backend stream → postprocess → events.

:func:`run_completion` is the whole data flow for one request.  It yields
``{"delta": str}`` events as visible text arrives and ends with one
``{"done": True, "completion": str, "timings": {...}}``; failures are raised
as :class:`~jupyter_codestral.errors.CompletionError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from .backends.base import Backend, FimRequest
from .context import ContextBudget, FimContext, build_context, cell_marker, estimate_tokens
from .namespace import KernelState
from .postprocess import CompletionFilter, options_for
from .redaction import redact_context
from .request import CompletionRequest
from .routing import route_kind
from .usage import UsageLedger


def stop_sequences(context: FimContext, single_line: bool) -> tuple[str, ...]:
    """Strings at which the backend itself should stop, to save its time."""
    stops: list[str] = []
    if context.is_notebook:
        stops.append("\n" + cell_marker(context.language))  # the next cell begins
    if single_line and context.line_prefix.strip():
        stops.append("\n")
    return tuple(stops)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def run_completion(
    request: CompletionRequest,
    backend: Backend,
    budget: ContextBudget,
    max_tokens: int,
    kernel: KernelState | None = None,
    ledger: UsageLedger | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    start = time.perf_counter()

    def redacted(context: FimContext) -> tuple[FimContext, int]:
        """Before the context reaches a backend that sends it away: secrets replaced (and how many)."""
        if not backend.settings.redact_secrets:
            return context, 0
        done = redact_context(context)
        return done.context, done.count

    contexts: dict[ContextBudget, FimContext] = {}

    def context_for(within: ContextBudget) -> FimContext:
        """The context within another budget (a routed backend may have one of its own)."""
        if within not in contexts:
            contexts[within] = redacted(build_context(request, within, kernel))[0]
        return contexts[within]

    context = build_context(request, budget, kernel)
    redacting = time.perf_counter()
    context, redactions = redacted(context)
    redaction_ms = _ms(time.perf_counter() - redacting)
    contexts[budget] = context
    options = options_for(context, single_line=request.single_line)
    route = route_kind(context, options.single_line)
    fim = FimRequest(
        context=context,
        max_tokens=request.max_tokens or max_tokens,
        stop=stop_sequences(context, options.single_line),
        prefetch=request.prefetch,
        route=route,
        ledger=ledger,
        budget=budget,
        context_for=context_for,
    )
    completion = CompletionFilter(options)
    context_done = time.perf_counter()
    first_text: float | None = None

    async with aclosing(backend.serve(fim)) as pieces:
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
        "route": route,
        **fim.outcome,  # a routing backend says which backend answered
        "timings": {
            "context_ms": _ms(context_done - start),
            "first_token_ms": _ms((first_text or end) - start),
            "total_ms": _ms(end - start),
            "prompt_tokens_estimate": estimate_tokens(context.prefix + context.suffix, budget.chars_per_token),
            "cells_before": context.cells_before,
            "cells_after": context.cells_after,
            "kernel_summary": kernel is not None and kernel.latest is not None,
            "redactions": redactions,
            "redaction_ms": redaction_ms,
        },
    }
