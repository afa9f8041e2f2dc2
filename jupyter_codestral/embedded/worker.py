"""The embedded model's worker process: llama.cpp behind JSON lines on stdin/stdout.

It runs apart from the Jupyter server so that a crash in native code (or an
out-of-memory kill) costs one completion, not the user's server.

Commands (one JSON object per line on stdin)::

    {"op": "complete", "id": 1, "prompt": "...", "max_tokens": 64, "stop": ["\\n"]}
    {"op": "complete", "id": 2, "prompt": "...", "prefetch": true}   read the prompt only
    {"op": "complete", "id": 3, "prompt": "...", "richer_prompt": "..."}
    {"op": "cancel", "id": 1}

Events (one JSON object per line on stdout)::

    {"event": "state", "state": "assembling" | "verifying" | "loading" | "ready", "progress": 0.4}
    {"event": "fatal", "message": "..."}          the model cannot be used; do not restart
    {"event": "text", "id": 1, "text": "..."}
    {"event": "done", "id": 1, "timings": {...}}
    {"event": "error", "id": 1, "kind": "cancelled" | "failed", "message": "...", "timings": {...}}
    {"event": "ahead", "read_tokens": 128, "finished": false}   reading a richer prompt ahead stopped

Requests run one at a time, in the order they came, except that a prefetch
gives way to any request someone waits for.  A prompt is read in
chunks of ``--chunk-tokens``, so what was read stays read when a request is
cancelled: a ``cancel`` stops the request at the end of its chunk (or, while
it generates, at the next token), and the next request, whose prompt mostly
begins like it (the next keystroke in the same cell), continues from there.
Only when the next request waiting diverges within the chunk being read is
the chunk aborted inside llama.cpp at once (its abort callback).  What the
model has read is kept across requests and notebooks by ``PromptCache``.

A ``richer_prompt`` says more than ``prompt`` (the later cells of the
notebook) but begins differently, so reading it costs seconds after each
cell move.  A request is answered from it once the model has read nearly all
of it, else from ``prompt`` at once; meanwhile the worker reads the richer
prompt ahead whenever no request waits (a request arriving stops that reading
at once, and what was read is kept).  A prefetch reads ``prompt``, then the
richer one.  Events report which one answered (``timings.richer``).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .prompt_cache import PromptCache, Tokens, common_prefix

# A richer prompt answers a request when it needs at most this many more tokens read than the
# plain one: a few tokens cost a few milliseconds, the later cells' help is worth that.
RICHER_SLACK_TOKENS = 16
# Reading ahead starts once no request came for this long: keystrokes in a burst do not pay for
# swapping the prompt they continue out and back in.
READ_AHEAD_AFTER_S = 0.15


class Emitter:
    """Thread-safe JSON-lines writer."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.last_progress = 0.0

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields})
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def progress(self, state: str) -> Any:
        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if now - self.last_progress > 0.2 or done == total:
                self.last_progress = now
                self("state", state=state, progress=round(done / total, 3))

        return report


class Cancelled(Exception):
    pass


@dataclass
class Job:
    """One ``complete`` command, tokenized when it arrived."""

    id: int
    tokens: Tokens
    max_tokens: int
    stop: list[str]
    prefetch: bool
    richer: Tokens | None = None  # the richer prompt, if any
    cancelled: bool = False
    reading: bool = True  # still reading a prompt (else generating)
    current: Tokens = field(init=False)  # the prompt being read (a prefetch goes on to the richer one)
    chunk_end: int = 0  # the prompt tokens read once the current chunk is done
    timings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.current = self.tokens


class Generator:
    """Owns the llama.cpp model and runs one request at a time."""

    def __init__(
        self, model_path: Path, n_ctx: int, threads: int, chunk: int, cache_mb: int, reuse: bool, stop_tokens: list[str]
    ) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_batch=chunk,  # eval() reads the prompt in chunks of this size
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.chunk = chunk
        self.cache = PromptCache(self.llm, cache_mb * 2**20, reuse)
        self.abort = threading.Event()
        # Polled by llama.cpp during decoding; returning True aborts it.
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self.abort.is_set())
        llama_cpp.llama_set_abort_callback(self.llm._ctx.ctx, self._abort_cb, None)
        self.stop_ids = {self.llm.token_eos()}
        for text in stop_tokens:
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])

    def tokenize(self, prompt: str, max_tokens: int) -> Tokens:
        tokens = np.array(self.llm.tokenize(prompt.encode(), add_bos=False, special=True), dtype=np.intc)
        room = self.llm.n_ctx() - max(max_tokens, 1) - 1
        return tokens[-room:] if len(tokens) > room else tokens  # the cursor end matters most

    def choose(self, job: Job) -> Tokens:
        """The prompt to answer ``job`` from: the richer one if it is (nearly) read already."""
        richer = job.richer
        if richer is not None and not job.prefetch:
            cheap = self.cache.unread(richer) <= self.cache.unread(job.tokens) + RICHER_SLACK_TOKENS
            return richer if cheap else job.tokens
        return job.tokens

    def _read(self, tokens: Tokens, stop: Callable[[], bool], job: Job | None = None) -> bool:
        """Read ``tokens`` but the last (whose logits start a completion) from where prepare() left
        the context, chunk by chunk, until ``stop()``; whether all of it was read."""
        llm = self.llm
        end = len(tokens) - 1
        while llm.n_tokens < end:
            if stop():
                return False
            chunk_end = min(end, llm.n_tokens + self.chunk)
            if job is not None:
                job.chunk_end = chunk_end
            llm.eval(tokens[llm.n_tokens : chunk_end].tolist())
        return True

    def _read_for(self, job: Job, tokens: Tokens) -> None:
        """:meth:`_read` for a request, which a cancel stops."""
        job.current, job.reading = tokens, True
        if not self._read(tokens, lambda: job.cancelled, job):
            raise Cancelled
        job.reading = False

    def read_ahead(self, tokens: Tokens, waiting: Callable[[], bool], emit: Emitter) -> bool:
        """Read ``tokens`` while ``waiting()`` is false (the caller sets ``abort`` when a request arrives).

        True once all of it is read (now or before), or when nothing read is kept (the cache is off)."""
        if not self.cache.reuse or self.cache.unread(tokens) <= 1:
            return True
        start, _ = self.cache.prepare(tokens, keep_live=True)  # the next keystroke wants it back
        try:
            finished = self._read(tokens, waiting)
        except RuntimeError:  # llama_decode "aborted": a request arrived
            if not self.abort.is_set():
                raise
            finished = False
        emit("ahead", read_tokens=min(self.llm.n_tokens, len(tokens) - 1) - start, finished=finished)
        return finished

    def run(self, job: Job, emit: Emitter) -> None:
        llm = self.llm
        start = time.perf_counter()
        prompt = self.choose(job)
        cached, restored = self.cache.prepare(prompt)
        job.timings = {
            "prompt_tokens": len(prompt),
            "cached_tokens": cached,
            "restored": restored,
            "richer": prompt is job.richer,
        }
        stops = [s for s in job.stop if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, generated = "", 0, 0
        first_token: float | None = None
        read = 0  # of the prompt answered from (a prefetch goes on to the richer one)
        try:
            self._read_for(job, prompt)
            read = min(llm.n_tokens, len(prompt)) - cached
            if job.prefetch and job.richer is not None and self.cache.reuse:
                self.cache.prepare(job.richer, keep_live=True)  # the first keystroke may come before it is read
                self._read_for(job, job.richer)
            tokens = () if job.prefetch else llm.generate(prompt.tolist(), temp=0.0, top_k=1, repeat_penalty=1.0)
            for token in tokens:
                if job.cancelled:
                    raise Cancelled
                first_token = first_token or time.perf_counter()
                if token in self.stop_ids:
                    break
                generated += 1
                text += decoder.decode(llm.detokenize([token]))
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
                # Hold back a tail that may still become a stop string.
                held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                if len(text) - held > sent:
                    emit("text", id=job.id, text=text[sent : len(text) - held])
                    sent = len(text) - held
                if generated >= job.max_tokens:
                    break
            if len(text) > sent:
                emit("text", id=job.id, text=text[sent:])
        except RuntimeError as exc:  # llama_decode returned "aborted"
            if self.abort.is_set():
                raise Cancelled from None
            raise RuntimeError(f"llama.cpp failed: {exc}") from None
        finally:
            end_time = time.perf_counter()
            job.timings |= {
                "read_tokens": min(llm.n_tokens, len(prompt)) - cached if job.current is prompt else read,
                "generated_tokens": generated,
                "worker_first_token_ms": round(((first_token or end_time) - start) * 1000, 2),
                "worker_total_ms": round((end_time - start) * 1000, 2),
                **self.cache.describe(),
            }
        emit("done", id=job.id, timings=job.timings)


class Scheduler:
    """The queue of requests, fed by the thread reading stdin, served by the main thread."""

    def __init__(self, generator: Generator, emit: Emitter) -> None:
        self.generator = generator
        self.emit = emit
        self.lock = threading.Condition()
        self.queue: deque[Job | None] = deque()
        self.running: Job | None = None
        self.ahead: Tokens | None = None  # the latest request's richer prompt, read while no request waits
        self.reading_ahead = False

    def read_commands(self, stream: TextIO) -> None:
        for line in stream:
            try:
                cmd = json.loads(line)
            except ValueError:
                continue
            if cmd.get("op") == "cancel":
                self.cancel(cmd.get("id"))
            elif cmd.get("op") == "complete":
                try:
                    max_tokens = int(cmd.get("max_tokens", 64))
                    richer = cmd.get("richer_prompt")
                    job = Job(
                        int(cmd["id"]),
                        self.generator.tokenize(str(cmd["prompt"]), max_tokens),
                        max_tokens,
                        [str(s) for s in cmd.get("stop", [])],
                        bool(cmd.get("prefetch")),
                        None if richer is None else self.generator.tokenize(str(richer), max_tokens),
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    self.emit("error", id=cmd.get("id"), kind="failed", message=f"Bad command: {exc}")
                    continue
                with self.lock:
                    self.queue.append(job)
                    if self.reading_ahead:
                        self.generator.abort.set()  # someone waits: stop reading ahead at once
                    running = self.running
                    if running is not None and running.prefetch and not job.prefetch:
                        # Someone waits for this one; the prefetch was only reading ahead
                        # (what it read is kept, and a copy saved if another prompt follows).
                        running.cancelled = True
                    self._abort_if_useless()
                    self.lock.notify()
        with self.lock:
            self.queue.append(None)  # the server went away
            self.lock.notify()

    def cancel(self, job_id: Any) -> None:
        with self.lock:
            for job in [self.running, *self.queue]:
                if job is not None and job.id == job_id:
                    job.cancelled = True
            self._abort_if_useless()

    def _abort_if_useless(self) -> None:
        """Abort the chunk being read at once if the next request will not use it."""
        running = self.running
        if running is None or not running.cancelled or not running.reading:
            return
        upcoming = next((job for job in self.queue if job is not None and not job.cancelled), None)
        if upcoming is not None and common_prefix(upcoming.tokens, running.current) < running.chunk_end:
            self.generator.abort.set()

    def serve(self) -> None:
        while True:
            with self.lock:
                while not self.queue and self.ahead is None:
                    self.lock.wait()
                if not self.queue:
                    self.lock.wait(READ_AHEAD_AFTER_S)
                self.generator.abort.clear()
                if not self.queue:
                    ahead = self.ahead
                    self.reading_ahead = True
                    job = None
                else:
                    job = self.queue.popleft()
                    if job is None:
                        return
                    if job.cancelled:
                        self.emit("error", id=job.id, kind="cancelled", message="Superseded by a newer request.")
                        continue
                    self.running = job
                    self.ahead = job.richer  # the cell the user is in now; None if it has no richer prompt
            if job is None:
                if ahead is not None:
                    self._read_ahead(ahead)
                continue
            try:
                self.generator.run(job, self.emit)
            except Cancelled:
                self.emit(
                    "error", id=job.id, kind="cancelled", message="Superseded by a newer request.", timings=job.timings
                )
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the worker
                self.emit("error", id=job.id, kind="failed", message=str(exc))
            finally:
                with self.lock:
                    self.running = None

    def _read_ahead(self, tokens: Tokens) -> None:
        finished = True
        try:
            finished = self.generator.read_ahead(tokens, lambda: bool(self.queue), self.emit)
        except Exception as exc:  # noqa: BLE001 - reading ahead is only a help; requests still get answered
            print(f"reading ahead failed: {exc}", file=sys.stderr)
        finally:
            with self.lock:
                self.reading_ahead = False
                if finished and self.ahead is tokens:
                    self.ahead = None


def resolve_model(args: argparse.Namespace, emit: Emitter) -> Path:
    from .model_files import MODELS, ModelFileError, ensure_model, verify

    if args.model_path:
        path = Path(args.model_path).expanduser()
        if not path.is_file():
            raise ModelFileError(f"The model file {path} does not exist.")
        if args.sha256:
            emit("state", state="verifying", progress=0.0)
            verify(path, args.sha256, emit.progress("verifying"))
        return path
    spec = MODELS.get(args.model)
    if spec is None:
        raise ModelFileError(
            f"Unknown bundled model {args.model!r}; known: {', '.join(MODELS)}. "
            "Set model_path to use another GGUF file."
        )
    steps = {"state": "verifying"}

    def on_step(step: str) -> None:
        steps["state"] = step
        emit("state", state=step, progress=0.0)

    return ensure_model(spec, progress=lambda d, t: emit.progress(steps["state"])(d, t), on_step=on_step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_codestral.embedded.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4_k_m", help="a bundled model's name")
    parser.add_argument("--model-path", help="any GGUF file instead of a bundled model")
    parser.add_argument("--sha256", help="expected sha256 of --model-path")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--chunk-tokens", type=int, default=64, help="prompt tokens read between checks for a cancel")
    parser.add_argument("--cache-mb", type=int, default=256, help="memory for saved copies of read prompts")
    parser.add_argument("--no-cache", action="store_true", help="re-read every prompt from scratch (for benchmarks)")
    parser.add_argument("--stop-token", action="append", default=[], help="a special token that ends a completion")
    args = parser.parse_args(argv)

    # Our protocol owns stdout; anything native code prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    emit = Emitter(protocol)

    try:
        path = resolve_model(args, emit)
        emit("state", state="loading", progress=None)
        generator = Generator(
            path,
            args.n_ctx,
            args.threads or os.cpu_count() or 1,
            max(1, args.chunk_tokens),
            args.cache_mb,
            not args.no_cache,
            args.stop_token,
        )
    except Exception as exc:  # noqa: BLE001 - reported to the server, which shows it
        emit("fatal", message=str(exc))
        return
    emit("state", state="ready", progress=None, model=str(path))
    scheduler = Scheduler(generator, emit)
    threading.Thread(target=scheduler.read_commands, args=(sys.stdin,), daemon=True).start()
    scheduler.serve()


if __name__ == "__main__":
    main()
