"""One request to the model: choose the prompt to answer from, read what the model has not read of it, write.

A request brings its prompts in order of preference: the richest first (the notebook with the cells
below the cursor), then the plain one (the notebook up to the cursor), then perhaps a nearer one (the
cells nearest the cursor only, read in a second or two where nothing around was read before).  It is
answered from the first that is (nearly) as cheap to finish as the cheapest; the others are read
while the user thinks (``scheduler.py``), each building on the one before.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import Aborted, Engine
from .kv_reuse import Plan, Tokens
from .prompt_cache import Prepared, PromptCache

# A richer prompt answers a request when it needs at most this many more tokens read than the
# cheapest one: a few tokens cost a few milliseconds, the richer context is worth that.
RICHER_SLACK_TOKENS = 16
# The nearer prompt answers only when the chosen one has more than this many tokens left to read
# (about 400 ms here): a cell far from anything read before.
NEARER_AFTER_TOKENS = 64
# The next window's prompt is read ahead when more than this many of its tokens are unread: its start
# is what matters, and its end (the cell being typed) changes with every keystroke.
NEXT_WINDOW_AFTER_TOKENS = 64

Emit = Callable[..., None]


class Cancelled(Exception):
    pass


@dataclass
class Job:
    """One ``complete`` command, tokenized when it arrived."""

    id: int
    prompts: list[Tokens]  # in order of preference, the richest first
    max_tokens: int
    stop: list[str]
    prefetch: bool
    document: str | None = None
    nearer: Tokens | None = None  # the cells nearest the cursor only: for when the others would take long
    next_window: Tokens | None = None  # the prompt the window's next step will give: read last, never answers
    cancelled: bool = False
    reading: bool = True  # still reading a prompt (else generating)
    current: Tokens | None = None  # the prompt being read
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def ahead(self) -> list[Tokens]:
        """Every prompt, in order of preference (the nearer one last): what is read while nothing waits."""
        return self.prompts + ([] if self.nearer is None else [self.nearer])

    def moves(self, prompt: Tokens) -> bool:
        """Whether ``prompt`` may keep runs read elsewhere, moved (``PromptCache.plan``).  Not the richer one:
        its later cells come before the earlier cells, whose KV, moved from the plain prompt, was computed
        without them, so the later cells help the model less (``benchmarks/typing_replay.py``: a
        configuration against its ``kv_reuse=prefix`` variant).  It is read once per cell, while the user
        thinks; typing extends it at its end."""
        return len(self.prompts) < 2 or prompt is not self.prompts[0]

    @property
    def more_to_read(self) -> bool:
        """Whether anything is read ahead for this job beyond the prompt it answers from."""
        return len(self.ahead) > 1 or self.next_window is not None


class Model:
    """The engine and what it has read; runs one job at a time."""

    def __init__(self, engine: Engine, cache: PromptCache, stop_tokens: list[str]) -> None:
        self.engine = engine
        self.cache = cache
        self.stop_ids = engine.end_tokens()
        for text in stop_tokens:
            token = engine.special_token(text)
            if token is not None:
                self.stop_ids.add(token)

    def tokenize(self, prompt: str, max_tokens: int) -> Tokens:
        tokens = self.engine.tokenize(prompt)
        room = self.engine.n_ctx - max(max_tokens, 1) - 1
        return tokens[-room:] if len(tokens) > room else tokens  # the cursor end matters most

    def choose(self, job: Job) -> Tokens:
        """The prompt to answer ``job`` from: the most preferred one that is (nearly) as cheap as the cheapest,
        or the nearer one when that would take long."""
        unread = [self.cache.unread(prompt, job.moves(prompt)) for prompt in job.prompts]
        cheapest = min(unread)
        chosen, left = next(
            (p, u) for p, u in zip(job.prompts, unread, strict=True) if u <= cheapest + RICHER_SLACK_TOKENS
        )
        if job.nearer is not None and left > NEARER_AFTER_TOKENS and self.cache.unread(job.nearer) < left:
            return job.nearer
        return chosen

    def read(
        self, prompt: Tokens, stop: Callable[[], bool], keep_live: bool, document: str | None, moves: bool = True
    ) -> tuple[Prepared, bool, int]:
        """Read ``prompt`` (but its last token) until ``stop()``: how the context was made ready for it,
        whether all of it is read, and how many tokens were read."""
        prepared = self.cache.prepare(prompt, keep_live=keep_live, document=document, moves=moves)
        try:
            finished, decoded = self.cache.read(prompt, prepared.plan, stop)
        except Aborted:
            self.cache.abandon()
            raise
        return prepared, finished, decoded

    def next_to_read(self, job: Job) -> Tokens | None:
        """Of ``job``'s prompts (in order of preference), the one to read next, or None when nothing more is worth
        reading: none after the most preferred one already read (it answers), and among those before it, the
        most preferred that is nearly as cheap as the cheapest (each read builds on the ones read before)."""
        prompts = job.ahead
        unread = [self.cache.unread(prompt, job.moves(prompt)) for prompt in prompts]
        done = next((n for n, left in enumerate(unread) if left <= 1), len(prompts))
        if done == 0:
            return None
        cheapest = min(unread[:done])
        return next(p for p, left in zip(prompts, unread, strict=False) if left <= cheapest + NEARER_AFTER_TOKENS)

    def read_ahead(self, job: Job, waiting: Callable[[], bool]) -> tuple[int, bool]:
        """Read ``job``'s prompts (:meth:`next_to_read` says in which order), then its next window's, while
        ``waiting()`` is false (the scheduler aborts a batch when a request arrives); (tokens read, whether
        nothing is left to read)."""
        read = 0
        while (prompt := self.next_to_read(job)) is not None or (
            (prompt := job.next_window) is not None and self.cache.unread(prompt) > NEXT_WINDOW_AFTER_TOKENS
        ):
            try:
                _, finished, decoded = self.read(prompt, waiting, True, job.document, job.moves(prompt))
            except Aborted as aborted:
                return read + aborted.read, False
            read += decoded
            if not finished:
                return read, False
            if prompt is job.next_window:
                # Kept as a copy for when the step comes; the cell being typed has its own prompt in the context.
                self.cache.save_live(1)
                break
        return read, True

    def run(self, job: Job, emit: Emit) -> None:
        start = time.perf_counter()
        # A request reads the prompt it answers from; a prefetch reads every prompt, the cheapest first
        # (its figures describe the one a request would answer from at once).
        prompt = job.prompts[-1] if job.prefetch else self.choose(job)
        job.timings = {
            "prompt_tokens": len(prompt),
            "richer": len(job.prompts) > 1 and prompt is job.prompts[0],
            "nearer": prompt is job.nearer,
        }
        prepared: Prepared | None = None
        read = generated = 0
        first_token: float | None = None
        try:
            job.current, job.reading = prompt, True
            if job.prefetch:
                kept = len(prompt) - self.cache.unread(prompt, job.moves(prompt))
                read, _ = self.read_ahead(job, lambda: job.cancelled)
                prepared = Prepared(Plan(len(prompt), kept), "context")
            else:
                prepared, _, read = self.read(prompt, lambda: job.cancelled, False, job.document, job.moves(prompt))
            if job.cancelled:
                raise Cancelled
            job.reading = False
            if not job.prefetch:
                read += 1  # its last token, whose logits start the completion
                generated, first_token = self._write(job, prompt, emit)
        except Aborted:
            raise Cancelled from None
        finally:
            end_time = time.perf_counter()
            job.timings |= {
                "cached_tokens": prepared.plan.kept if prepared is not None else 0,
                "restored": prepared is not None and prepared.restored,
                "read_tokens": read,
                "generated_tokens": generated,
                "worker_first_token_ms": round(((first_token or end_time) - start) * 1000, 2),
                "worker_total_ms": round((end_time - start) * 1000, 2),
                **self.cache.describe(),
            }
        emit("done", id=job.id, timings=job.timings)

    def _write(self, job: Job, prompt: Tokens, emit: Emit) -> tuple[int, float | None]:
        """Write the completion after ``prompt`` (read but its last token), its text sent as it comes with its
        tokens' log-probabilities; (tokens written, when the first came)."""
        engine = self.engine
        stops = [s for s in job.stop if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, generated = "", 0, 0
        logprob, scored = 0.0, 0  # of the tokens written since the last text event
        first_token: float | None = None
        engine.decode(prompt[-1:])
        while generated < job.max_tokens:
            if job.cancelled:
                raise Cancelled
            token, token_logprob = engine.next_token()
            first_token = first_token or time.perf_counter()
            if token in self.stop_ids:
                break
            generated += 1
            logprob, scored = logprob + token_logprob, scored + 1
            text += decoder.decode(engine.piece(token))
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                break
            # Hold back a tail that may still become a stop string.
            held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            if len(text) - held > sent:
                emit("text", id=job.id, text=text[sent : len(text) - held], logprob=logprob, tokens=scored)
                sent, logprob, scored = len(text) - held, 0.0, 0
            if generated < job.max_tokens:
                engine.decode(np.array([token], dtype=np.intc))
        if len(text) > sent:
            emit("text", id=job.id, text=text[sent:], logprob=logprob, tokens=scored)
        return generated, first_token
