"""What the embedded model has read: the prompt in its context, and saved copies of others.

Reading a prompt is the expensive part on a CPU (a few ms per token), while
continuing one whose start is already in llama.cpp's KV cache costs only the
new tokens.  The context holds one prompt; when a new prompt would throw much
of it away (the user moved to another notebook, or to a cell the context no
longer matches), its KV state is copied out first (``llama_state_seq_get_data``,
about 12 KB per token for the 0.5B model), and a later prompt that shares
more with a saved copy than with the context gets that copy back
(``llama_state_seq_set_data``, a memcpy).  Copies are kept least recently
used first, within a memory budget.

Runs in the worker process, on the thread that owns the model.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]

# Restoring a copy (and saving the context first) costs tens of milliseconds:
# worth it only when it spares reading at least this many tokens.
MIN_GAIN_TOKENS = 32
# A prompt that would drop at least this many tokens of the context saves it first.
MIN_SAVED_TOKENS = 128


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many tokens ``a`` and ``b`` share at their start."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass
class SavedState:
    tokens: Tokens
    data: Any  # a ctypes byte array holding the sequence's KV state

    @property
    def size(self) -> int:
        return ctypes.sizeof(self.data)


class PromptCache:
    def __init__(self, llm: Any, budget_bytes: int, reuse: bool = True) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llm
        self.budget_bytes = budget_bytes if reuse else 0
        self.reuse = reuse  # off: every prompt is read from its start (to measure what reuse is worth)
        self.saved: OrderedDict[int, SavedState] = OrderedDict()
        self._ids = 0

    @property
    def live(self) -> Tokens:
        return self.llm.input_ids[: self.llm.n_tokens]  # type: ignore[no-any-return]

    @property
    def saved_bytes(self) -> int:
        return sum(state.size for state in self.saved.values())

    def prepare(self, tokens: Tokens, keep_live: bool = False) -> tuple[int, bool]:
        """Make the context hold as much of ``tokens``' start as any copy has.

        ``keep_live``: save what the context holds even if short (a request will come back to it soon).
        Returns (how many of its tokens need no reading, whether a copy was restored)."""
        if not self.reuse:
            self.llm.reset()
            self.llm._ctx.kv_cache_seq_rm(0, 0, -1)
            return 0, False
        least = 1 if keep_live else MIN_SAVED_TOKENS  # the shortest context worth a copy
        keep = common_prefix(self.live, tokens)
        best, best_keep = self._best_copy(tokens, keep)
        restored = False
        if best is not None and best_keep >= keep + MIN_GAIN_TOKENS:
            state = self.saved.pop(best)  # out of the way of the context's own copy and eviction
            self.save_live(least)
            restored = self._restore(state)
            keep = common_prefix(self.live, tokens)
        elif self.llm.n_tokens - keep >= least:
            self.save_live(least)  # about to be overwritten: keep a copy to come back to
        # The last token is always read again: its logits start the completion.
        keep = min(keep, len(tokens) - 1)
        self.llm._ctx.kv_cache_seq_rm(0, keep, -1)
        self.llm.n_tokens = keep
        return keep, restored

    def _best_copy(self, tokens: Tokens, least: int) -> tuple[int | None, int]:
        """The saved copy sharing the longest start with ``tokens``, if longer than ``least`` (key, length)."""
        best, best_keep = None, least
        for key, state in self.saved.items():
            shared = common_prefix(state.tokens, tokens)
            if shared > best_keep:
                best, best_keep = key, shared
        return best, best_keep

    def unread(self, tokens: Tokens) -> int:
        """How many of ``tokens`` neither the context nor any copy holds (what prepare() would leave to read)."""
        if not self.reuse:
            return len(tokens)
        return len(tokens) - self._best_copy(tokens, common_prefix(self.live, tokens))[1]

    def save_live(self, least: int = MIN_SAVED_TOKENS) -> None:
        """Copy the context's state out, unless a copy already holds it or it is shorter than ``least``."""
        if self.budget_bytes <= 0 or self.llm.n_tokens < least:
            return
        live = self.live.copy()
        n = len(live)
        for key, state in list(self.saved.items()):
            shared = common_prefix(state.tokens, live)
            if shared == n:  # a copy already holds all of it
                self.saved.move_to_end(key)
                return
            if shared == len(state.tokens):  # the context holds all of that copy and more
                del self.saved[key]
        lib, ctx = self._llama_cpp, self.llm._ctx.ctx
        size = lib.llama_state_seq_get_size(ctx, 0)
        if size > self.budget_bytes:
            return
        data = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(ctx, data, size, 0) != size:
            return
        self._ids += 1
        self.saved[self._ids] = SavedState(live, data)
        while self.saved_bytes > self.budget_bytes:
            self.saved.popitem(last=False)

    def _restore(self, state: SavedState) -> bool:
        """Load a copy into the context (it stays saved, as the most recently used)."""
        self.llm._ctx.kv_cache_seq_rm(0, 0, -1)
        if not self._llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, state.data, state.size, 0):
            self.llm.n_tokens = 0  # it did not load: read from the start
            return False
        n = len(state.tokens)
        self.llm.input_ids[:n] = state.tokens
        self.llm.n_tokens = n
        self._ids += 1
        self.saved[self._ids] = state
        return True

    def describe(self) -> dict[str, Any]:
        return {"saved_prompts": len(self.saved), "saved_mb": round(self.saved_bytes / 2**20, 1)}
