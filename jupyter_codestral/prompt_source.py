"""A request's text, from which each backend takes the context it needs.

A routed backend may have a budget of its own, and the embedded model's
richer prompt wants the earlier cells in another window; each asks the
request's :class:`PromptSource` for the context within its budget, built once
per budget and redacted when prompts leave the machine.
"""

from __future__ import annotations

import time

from .context import ContextBudget, FimContext, build_context
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
            context = build_context(self.request, budget, self.kernel)
            if self.redact:
                started = time.perf_counter()
                done = redact_context(context)
                context = done.context
                if not self._contexts:
                    self.redactions = done.count
                    self.redaction_ms = round((time.perf_counter() - started) * 1000, 2)
            self._contexts[budget] = context
        return context
