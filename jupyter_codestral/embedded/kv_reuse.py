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

from . import MIN_CHUNK_TOKENS

Tokens = npt.NDArray[np.intc]

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
    """Tokens (read before, or a prompt), indexed for :func:`plan_reuse` (each index built once, when first
    needed)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    @cached_property
    def keys(self) -> list[bytes]:
        """Each run of ``GRAM`` tokens, as bytes, by where it starts."""
        if len(self.tokens) < GRAM:
            return []
        return list(map(bytes, np.lib.stride_tricks.sliding_window_view(self.tokens, GRAM)))

    @cached_property
    def grams(self) -> dict[bytes, list[int]]:
        """Where each run of ``GRAM`` tokens starts."""
        index: dict[bytes, list[int]] = {}
        for position, key in enumerate(self.keys):
            index.setdefault(key, []).append(position)
        return index

    def likeness(self, other: Read, probes: int = 24) -> int:
        """About how many of ``other``'s tokens this holds (before planning): of ``probes`` runs of ``other``
        spread over it, the share found here, times its length."""
        keys = other.keys
        if not keys:
            return 0
        step = max(1, len(keys) // probes)
        sample = keys[::step]
        grams = self.grams
        return len(other.tokens) * sum(key in grams for key in sample) // len(sample)


def plan_reuse(read: Read, prompt: Read, min_chunk: int = MIN_CHUNK_TOKENS) -> Plan:
    """What of ``prompt`` can be kept from ``read``: the shared start, then the runs of at least
    ``min_chunk`` tokens found in both, in the same order in both, that keep the most tokens (a
    repeated line of code cannot pull the plan off the notebook's own order).  Never the prompt's
    last token."""
    tokens, wanted = read.tokens, prompt.tokens
    end = len(wanted) - 1  # the last token is always read
    if end <= 0:
        return Plan(len(wanted), 0)
    prefix = min(common_prefix(tokens, wanted), end)
    if prefix >= len(tokens) or end - prefix < min_chunk:
        return Plan(len(wanted), prefix)
    runs = _runs(read, prompt, prefix, end, min_chunk)
    return Plan(len(wanted), prefix, _most_kept(runs))


def _runs(read: Read, prompt: Read, prefix: int, end: int, min_chunk: int) -> list[Chunk]:
    """Every maximal run of at least ``min_chunk`` tokens the prompt (from ``prefix`` to ``end``) shares with
    what was read (from ``prefix`` on), by where it starts in the prompt."""
    tokens, wanted = read.tokens, prompt.tokens
    grams, keys = read.grams, prompt.keys
    reached: dict[int, int] = {}  # by diagonal (source - target): where the last run found on it ends
    runs: list[Chunk] = []
    for target in range(prefix, end - min_chunk + 1):
        for source in grams.get(keys[target], ()):
            diagonal = source - target
            if source < prefix or reached.get(diagonal, -1) > target:
                continue  # before the kept start, or inside a run already found
            length = common_prefix(tokens[source:], wanted[target:end])
            reached[diagonal] = target + length
            if length >= min_chunk:
                runs.append(Chunk(source, target, length))
    return runs


def _most_kept(runs: list[Chunk]) -> tuple[Chunk, ...]:
    """Of ``runs`` (ordered by target), the ones in order in both the prompt and what was read, apart,
    that keep the most tokens."""
    kept = [run.length for run in runs]
    before = [-1] * len(runs)
    for i, run in enumerate(runs):
        for j in range(i):
            other = runs[j]
            if (
                other.target + other.length <= run.target
                and other.source + other.length <= run.source
                and kept[j] + run.length > kept[i]
            ):
                kept[i], before[i] = kept[j] + run.length, j
    if not runs:
        return ()
    i = max(range(len(runs)), key=kept.__getitem__)
    chosen: list[Chunk] = []
    while i != -1:
        chosen.append(runs[i])
        i = before[i]
    return tuple(reversed(chosen))
