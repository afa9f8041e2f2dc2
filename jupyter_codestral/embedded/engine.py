"""The model and its context, through llama.cpp's low-level API: read tokens at positions, choose the next
token, and move what was read.

Sequence 0 holds the prompt being read, at positions 0..n-1 (``Engine.tokens``).  Sequence 1 holds KV
being moved: tokens read before that the new prompt keeps at other positions wait there, already at
their new positions, until the text before them is read (llama.cpp reads a sequence's tokens only
after the last position it holds).  Moving KV shifts its positions; llama.cpp rotates the keys
(RoPE) on the next decode.

Runs in the worker process, on the thread that owns the model.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cpu import Guard, buffer_sizes, build_features, crash, injected_fault
from .kv_reuse import Chunk, Tokens

LIVE = 0  # the sequence that holds the prompt
PARKED = 1  # the sequence where moved KV waits
# Parked chunks pass through positions this far out, so that no two ranges meet while they move.
FAR = 1 << 24


class Aborted(Exception):
    """A decode was stopped from another thread (a request arrived that needs the model); ``read``: the
    tokens it had read before the aborted batch (they stay in the context)."""

    def __init__(self, read: int = 0) -> None:
        super().__init__(read)
        self.read = read


# What the self-check reads and writes before the worker says it is ready: a native crash in the
# kernels (llama.cpp's AMX kernels on some CPUs) then happens at start-up, where a safer configuration
# can be tried, not at the user's first keystroke.  One batch of prompt (the matrix kernels) and a few
# tokens written one at a time (the vector kernels).
SELF_CHECK_PROMPT = (
    "import numpy as np\nimport pandas as pd\n\n\ndef summarize(frame: pd.DataFrame) -> pd.DataFrame:\n"
    '    """Mean and spread of every numeric column."""\n    numeric = frame.select_dtypes("number")\n'
    '    return pd.DataFrame({"mean": numeric.mean(), "std": numeric.std()})\n\n\nvalues = np.arange('
)
SELF_CHECK_WRITE = 4


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check measured: prompt reading and writing speed on this machine."""

    read_tokens: int
    read_tokens_per_s: float
    write_tokens_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "read_tokens": self.read_tokens,
            "read_tokens_per_s": round(self.read_tokens_per_s, 1),
            "write_tokens_per_s": round(self.write_tokens_per_s, 1),
        }


class Engine:
    """One llama.cpp model and context."""

    def __init__(self, model_path: Path, n_ctx: int, threads: int, batch: int, guard: Guard) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.guard = guard
        self.threads = threads
        llama_cpp.llama_backend_init()
        self.build = build_features(llama_cpp.llama_print_system_info().decode("utf-8", "replace"))
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_extra_bufts = guard.extra_buffers
        loading_log: list[str] = []
        self._log_cb = _log_callback(llama_cpp, loading_log)
        llama_cpp.llama_log_set(self._log_cb, None)
        self.model = _internals.LlamaModel(path_model=str(model_path), params=model_params, verbose=False)
        self.buffers = buffer_sizes(loading_log)  # the weights' buffer types, MiB (CPU_REPACK, AMX, ...)
        loading_log.clear()
        self._fault = injected_fault(guard.kernels, threads)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = batch
        params.n_ubatch = batch
        params.n_threads = threads
        params.n_threads_batch = threads
        params.n_seq_max = 2  # LIVE and PARKED
        params.kv_unified = True  # one buffer: moving KV between the two sequences copies nothing
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.ctx = self.context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch_size = batch
        self._batch = _internals.LlamaBatch(n_tokens=batch, embd=0, n_seq_max=1, verbose=False)
        self.n_ctx = n_ctx
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.model.vocab)
        self.tokens: Tokens = np.empty(0, dtype=np.intc)  # what LIVE holds, in order
        self.batch_end = 0  # what LIVE will hold once the batch being read is done
        self.abort = threading.Event()
        # Polled by llama.cpp during decoding; returning True aborts it.
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self.abort.is_set())
        llama_cpp.llama_set_abort_callback(self.ctx, self._abort_cb, None)

    # -- text -------------------------------------------------------------------------
    def tokenize(self, text: str) -> Tokens:
        return np.array(self.model.tokenize(text.encode(), add_bos=False, special=True), dtype=np.intc)

    def piece(self, token: int) -> bytes:
        return self.model.detokenize([token])

    def special_token(self, text: str) -> int | None:
        """The single token ``text`` is, if it is one (a template's stop token)."""
        ids = self.tokenize(text)
        return int(ids[0]) if len(ids) == 1 else None

    def end_tokens(self) -> set[int]:
        """The tokens that end a generation (end of text, end of turn)."""
        vocab = self.model.vocab
        return {t for t in range(self.n_vocab) if self._lib.llama_vocab_is_eog(vocab, t)}

    # -- reading ------------------------------------------------------------------------
    def decode(self, tokens: Tokens, stop: Callable[[], bool] | None = None) -> int:
        """Read ``tokens`` into LIVE after what it holds, in batches; until ``stop()`` (checked between
        batches). Returns how many were read; raises :class:`Aborted` when another thread aborted a batch."""
        if self._fault:
            crash()
        done = 0
        while done < len(tokens):
            if stop is not None and stop():
                break
            part = tokens[done : done + self.batch_size]
            start = len(self.tokens)
            self.batch_end = start + len(part)
            self._batch.set_batch(part.tolist(), n_past=start, logits_all=False)
            try:
                self.context.decode(self._batch)
            except RuntimeError:
                # An aborted batch leaves nothing of its own behind that counts: drop it.
                self._lib.llama_memory_seq_rm(self.memory, LIVE, start, -1)
                if self.abort.is_set():
                    raise Aborted(done) from None
                raise
            self.tokens = np.concatenate([self.tokens, part])
            done += len(part)
        return done

    def next_token(self) -> tuple[int, float]:
        """The most likely token after what was read last, and its log-probability (greedy decoding:
        completions are deterministic)."""
        pointer = self._lib.llama_get_logits_ith(self.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        token = int(np.argmax(logits))
        top = float(logits[token])
        logprob = -float(np.log(np.exp(logits - top, dtype=np.float64).sum()))
        return token, logprob

    # -- keeping what was read ------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Keep the first ``n`` tokens of LIVE."""
        self._lib.llama_memory_seq_rm(self.memory, LIVE, n, -1)
        self.tokens = self.tokens[:n]

    def park(self, chunks: list[Chunk], keep: int) -> None:
        """Keep LIVE's first ``keep`` tokens, and move ``chunks`` of what LIVE held to PARKED at their new
        positions (the rest of LIVE is dropped)."""
        lib, mem = self._lib, self.memory
        lib.llama_memory_seq_rm(mem, PARKED, -1, -1)
        for chunk in chunks:
            lib.llama_memory_seq_cp(mem, LIVE, PARKED, chunk.source, chunk.source + chunk.length)
        self.truncate(keep)
        if chunks:
            lib.llama_memory_seq_add(mem, PARKED, -1, -1, FAR)
            for chunk in chunks:
                start = FAR + chunk.source
                lib.llama_memory_seq_add(mem, PARKED, start, start + chunk.length, chunk.target - start)

    def unpark(self, chunk: Chunk, tokens: Tokens) -> None:
        """Bring a parked chunk (``tokens``) into LIVE, right after what it holds (``chunk.target``)."""
        assert chunk.target == len(self.tokens), (chunk, len(self.tokens))
        lib, mem = self._lib, self.memory
        end = chunk.target + chunk.length
        lib.llama_memory_seq_cp(mem, PARKED, LIVE, chunk.target, end)
        lib.llama_memory_seq_rm(mem, PARKED, chunk.target, end)
        self.tokens = np.concatenate([self.tokens, tokens])

    def drop_parked(self) -> None:
        self._lib.llama_memory_seq_rm(self.memory, PARKED, -1, -1)

    def save(self) -> Any:
        """LIVE's KV as bytes (about 12 KB a token for the 0.5B model), or None if it cannot be copied."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self.ctx, LIVE)
        data = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(self.ctx, data, size, LIVE) != size:
            return None
        return data

    def load(self, data: Any, tokens: Tokens) -> bool:
        """Make LIVE hold ``tokens`` from their saved KV (``data``, as :meth:`save` gave it)."""
        self._lib.llama_memory_seq_rm(self.memory, LIVE, -1, -1)
        self.tokens = np.empty(0, dtype=np.intc)
        if not self._lib.llama_state_seq_set_data(self.ctx, data, ctypes.sizeof(data), LIVE):
            return False
        self.tokens = tokens  # (never changed in place: reading makes a new array)
        return True

    def self_check(self) -> SelfCheck:
        """Read a small prompt and write a few tokens (then forget them): the kernels ran, and how fast."""
        tokens = self.tokenize(SELF_CHECK_PROMPT)[: self.batch_size]
        # The first read pages the weights in (the user's first keystroke no longer pays for it); the
        # second is timed.
        self.decode(tokens)
        self.truncate(0)
        started = time.perf_counter()
        self.decode(tokens)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(SELF_CHECK_WRITE):
            token, _ = self.next_token()
            self.decode(np.array([token], dtype=np.intc))
        write_s = time.perf_counter() - started
        self.truncate(0)
        return SelfCheck(len(tokens), len(tokens) / read_s, SELF_CHECK_WRITE / write_s)


def _log_callback(llama_cpp: Any, lines: list[str]) -> Any:
    """llama.cpp's log: every line kept while ``lines`` is being filled (the model's loading), errors
    to stderr (as llama-cpp-python does when not verbose)."""

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _user_data: Any) -> None:
        line = text.decode("utf-8", "replace")
        lines.append(line)
        del lines[:-2000]
        if level == 3:  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(line)

    return callback
