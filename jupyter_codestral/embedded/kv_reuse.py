"""Which parts of a new prompt the model has read before, wherever they stood then.

Reading a prompt costs a few milliseconds a token on a CPU; its tokens' KV, once computed, can be
kept and moved.  A new prompt often holds, at other positions, runs of tokens read before: the
notebook's earlier cells after the window's start moved, the cells of a cell's plain prompt inside
its richer one, a notebook's variables after one of them changed.  :func:`plan_reuse` finds them: the
shared start, then runs of at least ``min_chunk`` tokens in the same order in both, so that only what
is new is read.  (llama.cpp's server does the same with ``--cache-reuse``, for text removed only.)

The kept tokens' KV was computed beside the text they had then, not the new prompt's; what this costs
in quality is measured (``benchmarks/typing_replay.py``, ``kv_reuse=prefix`` against the default).

Pure numpy: plans are tested without the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]

# A run shorter than this is read again rather than moved: short runs match by chance (a line's
# indentation, a common call), and each moved run's start lost its real neighbours.
MIN_CHUNK_TOKENS = 16
# Runs are found from matches of this many tokens (a k-gram index of what was read).
GRAM = 8


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many tokens ``a`` and ``b`` share at their start."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass(frozen=True)
class Chunk:
    """A run of tokens read before: where it was (``source``), where the new prompt has it (``target``)."""

    source: int
    target: int
    length: int


@dataclass(frozen=True)
class Plan:
    """How a new prompt is built from tokens read before: ``prefix`` tokens shared at the start (kept in
    place), then ``chunks`` moved, in order; every other token of the prompt is read."""

    prompt_len: int
    prefix: int
    chunks: tuple[Chunk, ...] = ()

    @property
    def kept(self) -> int:
        return self.prefix + sum(chunk.length for chunk in self.chunks)

    @property
    def unread(self) -> int:
        """The tokens left to read (the prompt's last token is always read: its logits start a completion)."""
        return self.prompt_len - self.kept

    def reads_before_kept(self) -> int:
        """Tokens read before the last moved chunk is in place (what a cancel would leave half done)."""
        return self.chunks[-1].target - self.prefix - sum(c.length for c in self.chunks[:-1]) if self.chunks else 0


class Read:
    """Tokens read before, indexed for :func:`plan_reuse` (the index is built once, when first needed)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    @cached_property
    def grams(self) -> dict[bytes, list[int]]:
        """Where each run of ``GRAM`` tokens starts."""
        tokens = self.tokens
        index: dict[bytes, list[int]] = {}
        if len(tokens) >= GRAM:
            windows = np.lib.stride_tricks.sliding_window_view(tokens, GRAM)
            for position, key in enumerate(map(bytes, windows)):
                index.setdefault(key, []).append(position)
        return index


def plan_reuse(read: Read, prompt: Tokens, min_chunk: int = MIN_CHUNK_TOKENS) -> Plan:
    """What of ``prompt`` can be kept from ``read``: the shared start, then each run of at least
    ``min_chunk`` tokens found in ``read`` after the previous one (the longest one where several
    start alike).  Never the prompt's last token."""
    tokens = read.tokens
    end = len(prompt) - 1  # the last token is always read
    if end <= 0:
        return Plan(len(prompt), 0)
    prefix = min(common_prefix(tokens, prompt), end)
    chunks: list[Chunk] = []
    if prefix < len(tokens) and end - prefix >= min_chunk:
        grams = read.grams
        source_from, position = prefix, prefix
        while position + max(GRAM, min_chunk) <= end:
            best, best_length = -1, 0
            for source in grams.get(prompt[position : position + GRAM].tobytes(), ()):
                if source < source_from:
                    continue
                length = common_prefix(tokens[source:], prompt[position:end])
                if length > best_length:
                    best, best_length = source, length
            if best_length >= min_chunk:
                chunks.append(Chunk(best, position, best_length))
                position += best_length
                source_from = best + best_length
            else:
                position += 1
    return Plan(len(prompt), prefix, tuple(chunks))
