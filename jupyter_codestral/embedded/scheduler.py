"""The worker's queue: requests in the order they came, and reading ahead while none waits.

Requests run one at a time, except that a prefetch gives way to any request someone waits for.  A
prompt is read in batches, so what was read stays read when a request is cancelled: a ``cancel``
stops the request at the end of its batch (or, while it generates, at the next token), and the
next request, whose prompt mostly begins like it, goes on from there.  Only when the next request
waiting shares less than the batch being read is the batch aborted inside llama.cpp at once.

While no request waits, the worker reads ahead the latest request's other prompts (the cheapest
first: ``jobs.Job.ahead``); a request arriving stops that at once (what was read is kept).  When
there is nothing left to read, the context is written to disk.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from typing import Any, TextIO

from .engine import Engine
from .jobs import Cancelled, Emit, Job, Model
from .kv_reuse import common_prefix

# Reading ahead starts once no request came for this long: keystrokes in a burst do not pay for
# swapping the prompt they continue out and back in.
READ_AHEAD_AFTER_S = 0.15
# When nothing at all is left to do for this long, the context goes to disk.
PERSIST_AFTER_S = 1.0


class Scheduler:
    """The queue of requests, fed by the thread reading stdin, served by the main thread."""

    def __init__(self, model: Model, emit: Emit) -> None:
        self.model = model
        self.emit = emit
        self.lock = threading.Condition()
        self.queue: deque[Job | None] = deque()
        self.running: Job | None = None
        # The latest request, while some of its prompts are still to read.
        self.ahead: Job | None = None
        self.reading_ahead = False

    @property
    def engine(self) -> Engine:
        return self.model.engine

    # -- commands (the reading thread) ---------------------------------------------------
    def read_commands(self, stream: TextIO) -> None:
        for line in stream:
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if command.get("op") == "cancel":
                self.cancel(command.get("id"))
            elif command.get("op") == "complete":
                self.submit(command)
        with self.lock:
            self.queue.append(None)  # the server went away
            self.lock.notify()

    def submit(self, command: dict[str, Any]) -> None:
        try:
            max_tokens = int(command.get("max_tokens", 64))
            prompts = command["prompts"]
            if not isinstance(prompts, list) or not prompts:
                raise ValueError("'prompts' must be a list of one prompt or more")
            nearer = command.get("nearer")
            next_window = command.get("next_window")
            job = Job(
                int(command["id"]),
                [self.model.tokenize(str(prompt), max_tokens) for prompt in prompts],
                max_tokens,
                [str(s) for s in command.get("stop", [])],
                bool(command.get("prefetch")),
                command.get("document"),
                None if nearer is None else self.model.tokenize(str(nearer), max_tokens),
                next_window=None if next_window is None else self.model.tokenize(str(next_window), max_tokens),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self.emit("error", id=command.get("id"), kind="failed", message=f"Bad command: {exc}")
            return
        with self.lock:
            self.queue.append(job)
            if self.reading_ahead:
                self.engine.abort.set()  # someone waits: stop reading ahead at once
            running = self.running
            if running is not None and running.prefetch and not job.prefetch:
                # Someone waits for this one; the prefetch was only reading ahead
                # (what it read is kept, and a copy saved if another prompt follows).
                running.cancelled = True
            self._abort_if_useless()
            self.lock.notify()

    def cancel(self, job_id: Any) -> None:
        with self.lock:
            for job in [self.running, *self.queue]:
                if job is not None and job.id == job_id:
                    job.cancelled = True
            self._abort_if_useless()

    def _abort_if_useless(self) -> None:
        """Abort the batch being read at once if the next request will not use it."""
        running = self.running
        if running is None or not running.cancelled or not running.reading or running.current is None:
            return
        upcoming = next((job for job in self.queue if job is not None and not job.cancelled), None)
        if upcoming is not None and common_prefix(upcoming.ahead[0], running.current) < self.engine.batch_end:
            self.engine.abort.set()

    # -- serving (the main thread) -------------------------------------------------------
    def serve(self) -> None:
        persisted = True  # nothing read yet: nothing to write
        while True:
            with self.lock:
                if not self.queue:
                    if self.ahead is not None:
                        self.lock.wait(READ_AHEAD_AFTER_S)  # the rest of a burst of keystrokes goes first
                    elif not persisted:
                        self.lock.wait(PERSIST_AFTER_S)
                    else:
                        while not self.queue and self.ahead is None:
                            self.lock.wait()
                self.engine.abort.clear()
                job: Job | None = None
                ahead = None
                if self.queue:
                    job = self.queue.popleft()
                    if job is None:
                        return
                    if job.cancelled:
                        self.emit("error", id=job.id, kind="cancelled", message="Superseded by a newer request.")
                        continue
                    self.running = job
                    # The cell the user is in now: its other prompts are read while nothing waits.
                    self.ahead = job if job.more_to_read else None
                elif self.ahead is not None:
                    ahead = self.ahead
                    self.reading_ahead = True
            persisted = job is None and ahead is None
            if job is not None:
                self._run(job)
            elif ahead is not None:
                self._read_ahead(ahead)
            else:
                self._persist()

    def _run(self, job: Job) -> None:
        try:
            self.model.run(job, self.emit)
        except Cancelled:
            self.emit(
                "error", id=job.id, kind="cancelled", message="Superseded by a newer request.", timings=job.timings
            )
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the worker
            self.emit("error", id=job.id, kind="failed", message=str(exc))
        finally:
            with self.lock:
                self.running = None

    def _read_ahead(self, job: Job) -> None:
        finished = True
        try:
            read, finished = self.model.read_ahead(job, lambda: bool(self.queue))
            self.emit("ahead", read_tokens=read, finished=finished)
        except Exception as exc:  # noqa: BLE001 - reading ahead is only a help; requests still get answered
            print(f"reading ahead failed: {exc}", file=sys.stderr)
        finally:
            with self.lock:
                self.reading_ahead = False
                if finished and self.ahead is job:
                    self.ahead = None

    def _persist(self) -> None:
        try:
            self.model.cache.persist_live()
        except Exception as exc:  # noqa: BLE001 - the disk is only a help
            print(f"saving to disk failed: {exc}", file=sys.stderr)
