"""request → context → chat prompt → backend stream → answer → events, for one edit the policy allows.

:func:`run_edit` is to an edit what :func:`~jupyter_codestral.pipeline.run_completion` is to a
completion (``service.py`` checks the policy and reads the kernel first).  It yields ``{"delta": str}``
events as the replacement of the range grows, and ends with one ``{"done": True, "replacement": str,
...}`` naming the range, the route, the backend and the timings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from .backends.base import FimRequest, piece_text
from .context import ContextBudget, estimate_tokens
from .edit_answer import CodeAnswer, DocAnswer, answer_opening
from .edit_prompt import edit_messages
from .edit_request import EditKind, EditRequest
from .errors import CompletionError, ErrorKind
from .kernel_variables import KernelState
from .pipeline import who_answered
from .prompt_source import PromptSource
from .router import Answered, Completer
from .routes import RouteKind
from .usage import UsageLedger

# An edit writes the range again: room for about three times its tokens, within these bounds.
MIN_EDIT_TOKENS = 256
MAX_EDIT_TOKENS = 2048


def edit_tokens(request: EditRequest, chars_per_token: float) -> int:
    """How many tokens the model may write for ``request``: the range again, and room to change it."""
    wanted = 3 * estimate_tokens(request.selected, chars_per_token) + 64
    if request.kind == EditKind.DOCUMENT:
        wanted = 64 + 2 * estimate_tokens(request.selected, chars_per_token) // 3
    return max(MIN_EDIT_TOKENS, min(MAX_EDIT_TOKENS, wanted))


def edit_done(
    request: EditRequest, replacement: str, answered: Answered | dict[str, Any], timings: dict[str, Any]
) -> dict[str, Any]:
    """An edit's last event: the whole replacement of its range, who answered, and the timings."""
    return {
        "done": True,
        "replacement": replacement,
        **who_answered(answered),
        "route": request.kind.value,
        "range": {"start": request.start, "end": request.end},
        "timings": timings,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def run_edit(
    request: EditRequest,
    completer: Completer,
    budget: ContextBudget,
    kernel: KernelState | None = None,
    ledger: UsageLedger | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    start = time.perf_counter()
    source = PromptSource(request.at_range(), kernel, redact=completer.redact_secrets)
    context = source.context(budget)
    messages = edit_messages(request, context)
    route = RouteKind(request.kind.value)
    fim = FimRequest(
        source=source,
        budget=budget,
        max_tokens=edit_tokens(request, budget.chars_per_token),
        route=route,
        ledger=ledger,
        chat=tuple(messages),
        chat_opening=answer_opening(request),
        prefetch=request.prefetch,
    )
    answer = (
        DocAnswer(request.selected)
        if request.kind == EditKind.DOCUMENT
        else CodeAnswer(request.source, request.start, request.end)
    )
    context_done = time.perf_counter()
    first_text: float | None = None
    answered: Answered | None = None

    async with aclosing(completer.serve(fim)) as pieces:
        async for piece in pieces:
            if isinstance(piece, Answered):
                answered = piece
                continue
            delta = answer.feed(piece_text(piece))
            if delta:
                first_text = first_text or time.perf_counter()
                yield {"delta": delta}
            if answer.finished:
                break  # leaving the block closes the backend stream
    if answered is None and not request.prefetch:
        raise CompletionError(
            ErrorKind.CONFIG,
            f"No backend serves {route} edits: name one in the route {route!r} (CodestralExtension.routes).",
            503,
        )
    if request.prefetch:
        # Only the prompt was read into the cache (or nothing, where no backend of the route keeps one).
        delta, replacement = "", request.selected
    else:
        delta = answer.finish()
        replacement = answer.replacement
    if delta:
        first_text = first_text or time.perf_counter()
        yield {"delta": delta}
    end = time.perf_counter()
    yield edit_done(
        request,
        replacement,
        answered or completer.summary(),
        {
            "context_ms": _ms(context_done - start),
            "first_token_ms": _ms((first_text or end) - start),
            "total_ms": _ms(end - start),
            "prompt_tokens_estimate": estimate_tokens("".join(m.content for m in messages), budget.chars_per_token),
            "cells_before": context.cells_before,
            "cells_after": context.cells_after,
            "kernel_summary": kernel is not None and kernel.latest is not None,
            "redactions": source.redactions,
            **({"prefetch_skipped": True} if answered is None else {}),
        },
    )
