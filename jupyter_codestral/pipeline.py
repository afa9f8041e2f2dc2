"""request → context → backend stream → postprocess → events.

:func:`run_completion` is the data flow for one request the policy allows
(``service.py`` checks the policy and reads the kernel first).  It yields
``{"delta": str}`` events as visible text arrives and ends with one
``{"done": True, "completion": str, ...}``; failures are raised as
:class:`~jupyter_codestral.errors.CompletionError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from .backends.base import FimRequest, Scored
from .context import ContextBudget, FimContext, cell_marker, estimate_tokens
from .kernel_variables import KernelState
from .postprocess import CompletionFilter, ConfidenceGate, Cut, options_for
from .prompt_source import PromptSource
from .request import CompletionRequest
from .router import Answered, Completer
from .routes import route_kind
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


def done_event(completion: str, answered: Answered | dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The last event of every completion: the text, and who answered (a backend, or the service's summary)."""
    return {"done": True, "completion": completion, **who_answered(answered), **fields}


def who_answered(answered: Answered | dict[str, Any]) -> dict[str, Any]:
    """The done event's fields that say who answered: a backend (and why not the ones before it in its
    route), or the service's summary."""
    if isinstance(answered, Answered):
        who: dict[str, Any] = {"backend": answered.backend, "model": answered.model}
        if answered.fallback_reason is not None:
            who["fallback_reason"] = answered.fallback_reason
        return who
    return {"backend": answered["backend"], "model": answered["model"]}


async def run_completion(
    request: CompletionRequest,
    completer: Completer,
    budget: ContextBudget,
    max_tokens: int,
    kernel: KernelState | None = None,
    ledger: UsageLedger | None = None,
    min_confidence: float | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """``max_tokens``: the server's ceiling, and the length of a completion whose request does not say;
    ``min_confidence``: suggestions whose first line's mean token log-probability is lower are not shown."""
    start = time.perf_counter()
    source = PromptSource(request, kernel, redact=completer.redact_secrets)
    context = source.context(budget)
    options = options_for(context, single_line=request.single_line)
    route = route_kind(context, options.single_line)
    fim = FimRequest(
        source=source,
        budget=budget,
        max_tokens=min(request.max_tokens or max_tokens, max_tokens),
        stop=stop_sequences(context, options.single_line),
        prefetch=request.prefetch,
        route=route,
        ledger=ledger,
    )
    completion = CompletionFilter(options)
    gate = ConfidenceGate(min_confidence) if min_confidence is not None else None
    context_done = time.perf_counter()
    first_text: float | None = None
    answered: Answered | None = None
    logprob, scored = 0.0, 0  # of the tokens of the pieces read (where the backend reports them)

    async with aclosing(completer.serve(fim)) as pieces:
        async for piece in pieces:
            if isinstance(piece, Answered):
                answered = piece
                continue
            if isinstance(piece, Scored):
                logprob, scored = logprob + piece.logprob, scored + piece.tokens
                piece = piece.text
            delta = completion.feed(piece)
            if gate is not None:
                delta = gate.feed(delta, logprob, scored, completion.finished)
            if delta:
                first_text = first_text or time.perf_counter()
                yield {"delta": delta}
            if completion.finished:
                break  # leaving the block closes the backend stream
    delta = completion.finish()
    if gate is not None:
        delta = gate.feed(delta, logprob, scored, True)
    if delta:
        first_text = first_text or time.perf_counter()
        yield {"delta": delta}
    end = time.perf_counter()
    hidden = gate is not None and not gate.shown
    quality: dict[str, Any] = {}
    if completion.cut is not None or (hidden and completion.text):
        quality["cut"] = str(Cut.CONFIDENCE if hidden and completion.text else completion.cut)
    if scored and completion.text:
        quality["confidence"] = round(logprob / scored, 4)
    yield done_event(
        "" if hidden else completion.text,
        answered or completer.summary(),
        route=str(route),
        **quality,
        timings={
            "context_ms": _ms(context_done - start),
            "first_token_ms": _ms((first_text or end) - start),
            "total_ms": _ms(end - start),
            "prompt_tokens_estimate": estimate_tokens(context.prefix + context.suffix, budget.chars_per_token),
            "cells_before": context.cells_before,
            "cells_after": context.cells_after,
            "kernel_summary": kernel is not None and kernel.latest is not None,
            "redactions": source.redactions,
            "redaction_ms": source.redaction_ms,
        },
    )
