"""A request's text, from which each backend takes the context it needs.

A routed backend may have a budget of its own, and the embedded model's
richer prompt wants the earlier cells in another window; each asks the
request's :class:`PromptSource` for the context within its budget, built once
per budget and redacted when prompts leave the machine.
"""

from __future__ import annotations

import time

from .context import ContextBudget, FimContext, build_context, next_window
from .kernel_variables import KernelState
from .redaction import redact_context
from .request import CompletionRequest


class PromptSource:
    """The contexts of one request, within any budget (each built once)."""

    def __init__(self, request: CompletionRequest | None, kernel: KernelState | None = None, redact: bool = False):
        self.request = request
        self.kernel = kernel
        self.redact = redact
        self._contexts: dict[ContextBudget, FimContext] = {}
        self._next_windows: dict[ContextBudget, FimContext | None] = {}
        self.redactions = 0  # secrets replaced in the first context built (the one the reply describes)
        self.redaction_ms = 0.0

    @classmethod
    def of(cls, context: FimContext) -> PromptSource:
        """A source with one context, whatever the budget (a probe of a backend)."""
        source = cls(None)
        source._fixed = context
        return source

    _fixed: FimContext | None = None

    def context(self, budget: ContextBudget) -> FimContext:
        if self._fixed is not None:
            return self._fixed
        context = self._contexts.get(budget)
        if context is None:
            assert self.request is not None
            context = self._contexts[budget] = self._redacted(build_context(self.request, budget, self.kernel))
        return context

    def next_window(self, budget: ContextBudget) -> FimContext | None:
        """The context the window's next step will give, when it is near (``context.next_window``): for a
        model that reads it ahead."""
        if self._fixed is not None or self.request is None:
            return None
        if budget not in self._next_windows:
            ahead = next_window(self.request, budget, self.kernel)
            self._next_windows[budget] = None if ahead is None else self._redacted(ahead, counted=False)
        return self._next_windows[budget]

    def _redacted(self, context: FimContext, counted: bool = True) -> FimContext:
        """``context``, its secrets replaced when prompts leave the machine; the first one counted (the
        reply describes it)."""
        if not self.redact:
            return context
        started = time.perf_counter()
        done = redact_context(context)
        if counted and not self._contexts:
            self.redactions = done.count
            self.redaction_ms = round((time.perf_counter() - started) * 1000, 2)
        return done.context
