"""The embedded worker's bookkeeping of what the model has read, run without the model.

:class:`TokensOnly` stands in for :class:`~jupyter_codestral.embedded.engine.Engine`: it tokenizes with the
model's real vocabulary (loaded alone, without the weights) and tracks which tokens its context holds,
where, and what is parked, as the engine does with llama.cpp's KV; nothing is computed.  The worker's
own :class:`~jupyter_codestral.embedded.jobs.Model` and :class:`~jupyter_codestral.embedded.prompt_cache.PromptCache`
run on it unchanged, so the tokens it reads are the ones the worker would read.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jupyter_codestral.embedded.kv_reuse import Chunk, Tokens
from jupyter_codestral.embedded.prompt_cache import PromptCache


class TokensOnly:
    """The engine's interface, over token arrays (a saved state is one byte a token)."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, batch: int = 64) -> None:
        import llama_cpp

        self._vocab = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        self.n_ctx = n_ctx
        self.batch_size = batch
        self.batch_end = 0
        self.tokens: Tokens = np.empty(0, dtype=np.intc)
        self.parked: dict[int, Tokens] = {}  # target position -> the chunk's tokens
        self.read = 0  # tokens decoded in all

    def tokenize(self, text: str) -> Tokens:
        return np.array(self._vocab.tokenize(text.encode(), add_bos=False, special=True), dtype=np.intc)

    def end_tokens(self) -> set[int]:
        return set()

    def special_token(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return int(ids[0]) if len(ids) == 1 else None

    def decode(self, tokens: Tokens, stop: Callable[[], bool] | None = None) -> int:
        done = 0
        while done < len(tokens):  # in batches, as the engine reads
            if stop is not None and stop():
                break
            part = tokens[done : done + self.batch_size]
            self.tokens = np.concatenate([self.tokens, part])
            done += len(part)
        self.read += done
        return done

    def truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]

    def park(self, chunks: list[Chunk], keep: int) -> None:
        self.parked = {chunk.target: self.tokens[chunk.source : chunk.source + chunk.length] for chunk in chunks}
        self.truncate(keep)

    def unpark(self, chunk: Chunk, tokens: Tokens) -> None:
        assert chunk.target == len(self.tokens)
        assert np.array_equal(self.parked.pop(chunk.target), tokens)  # the KV moved is the KV of these tokens
        self.tokens = np.concatenate([self.tokens, tokens])

    def drop_parked(self) -> None:
        self.parked = {}

    def save(self) -> Any:
        return (ctypes.c_uint8 * len(self.tokens))()

    def load(self, data: Any, tokens: Tokens) -> bool:
        self.tokens = tokens
        self.parked = {}
        return True


def cache_on(engine: TokensOnly, kv_cache_mb: int = 256) -> PromptCache:
    """The worker's prompt cache on ``engine``, with its memory budget in the engine's one byte a token
    (the model's KV is about 12 KB a token)."""
    return PromptCache(engine, kv_cache_mb * 2**20 // (12 * 1024))  # type: ignore[arg-type]
