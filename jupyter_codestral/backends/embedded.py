"""The embedded model: a llama.cpp worker process driven over JSON lines.

The worker is started with the Jupyter server and loads the model in the
background.  The completion service keeps at most one request per document
in flight (a newer one stops the older, whose stream then sends the worker
a ``cancel``), so the worker's first-come queue serves notebooks in turn.
If the worker dies, waiting requests get a readable error and it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sys
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from ..embedded.model_files import MODELS
from ..errors import ErrorKind, backend_error, error_kind
from ..usage import Usage
from .base import Backend, BackendItem, BackendSettings, BackendState, FimRequest, Scored

log = logging.getLogger(__name__)
# A worker that dies again soon after starting waits longer before the next try.
RESTART_DELAYS = (0.2, 1.0, 5.0, 15.0)
# The worker's figures the status shows (its last request's, and its copies').
CACHE_FIGURES = (
    "prompt_tokens",
    "cached_tokens",
    "read_tokens",
    "richer",
    "nearer",
    "restored",
    "saved_prompts",
    "saved_mb",
    "disk_prompts",
    "disk_mb",
)
# How long the worker may take to write what it read to disk when the server stops.
SHUTDOWN_S = 5.0


class EmbeddedBackend(Backend):
    name = "embedded"
    supports_prefetch = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.state = BackendState.IDLE  # until start(): at once on a server's start, or when a route first needs it
        self.progress: float | None = None
        self.fatal: str | None = None
        self.restarts = 0
        spec = MODELS.get(settings.model)
        if settings.model_path is None and spec is None:
            self.state, self.fatal = (
                BackendState.ERROR,
                (
                    f"Unknown embedded model {settings.model!r}; known: {', '.join(MODELS)}. "
                    "Set CodestralExtension.model_path to use another GGUF file."
                ),
            )
        self.template = settings.prompt.template_for(settings.model, spec.template if spec else None)
        self.last_timings: dict[str, Any] = {}
        self.timings_seen = 0
        self.last_ahead: dict[str, Any] = {}  # the worker's last reading of a richer prompt ahead
        self.aheads_seen = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()  # ready, or never will be
        self._closing = False
        if self.fatal:
            self._settled.set()

    # -- worker lifetime ------------------------------------------------------
    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jupyter_codestral.embedded.worker"]
        if self.settings.model_path:
            cmd += ["--model-path", self.settings.model_path]
            if self.settings.model_sha256:
                cmd += ["--sha256", self.settings.model_sha256]
        else:
            cmd += ["--model", self.settings.model]
        if self.settings.threads:
            cmd += ["--threads", str(self.settings.threads)]
        cmd += ["--reuse", self.settings.kv_reuse, "--cache-mb", str(self.settings.kv_cache_mb)]
        cmd += ["--disk-mb", str(self.settings.kv_disk_mb)]
        if self.settings.kv_disk_dir:
            cmd += ["--disk-dir", self.settings.kv_disk_dir]
        policy = self.settings.course_policy
        if policy.active:
            rules = {
                "disabled": list(policy.disabled),
                "allowed": None if policy.allowed is None else list(policy.allowed),
            }
            cmd += ["--policy", json.dumps(rules)]
        for token in self.template.stop:
            cmd += ["--stop-token", token]
        return cmd

    async def start(self) -> None:
        if self._supervisor is None and self.fatal is None:
            self._supervisor = asyncio.create_task(self._supervise())

    async def wait_ready(self) -> None:
        """For tools and tests: wait until the model is loaded (or cannot be)."""
        await self.start()
        await self._settled.wait()
        if self.fatal:
            raise backend_error(ErrorKind.LOADING, self.fatal)

    def _given_up(self) -> bool:
        """The model cannot be used (the worker said so), or the server is stopping: no restart."""
        return self.fatal is not None or self._closing

    async def _supervise(self) -> None:
        failures = 0
        while not self._given_up():
            started = asyncio.get_running_loop().time()
            await self._run_worker()
            if self._given_up():
                break
            self.restarts += 1
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.warning("jupyter_codestral: the embedded model worker stopped; restarting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _run_worker(self) -> None:
        self.state, self.progress = BackendState.STARTING, None
        self._ready.clear()
        self._settled.clear()
        proc = await asyncio.create_subprocess_exec(
            *self.worker_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._proc = proc
        stderr_task = asyncio.create_task(self._read_stderr(proc))
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self._dispatch(event)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            await stderr_task
            self._proc = None
            self._ready.clear()
            if self.fatal is None:
                self.state = BackendState.RESTARTING
                reason = f"The embedded model process stopped (exit code {code}); it is being restarted."
                for queue in self._pending.values():
                    queue.put_nowait({"event": "error", "kind": ErrorKind.WORKER_CRASHED, "message": reason})

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                log.debug("embedded model worker: %s", line)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "state":
            self.state, self.progress = BackendState(event["state"]), event.get("progress")
            if self.state == BackendState.READY:
                self._ready.set()
                self._settled.set()
        elif kind == "ahead":
            self.last_ahead = {"read_tokens": event.get("read_tokens"), "finished": event.get("finished")}
            self.aheads_seen += 1
        elif kind == "fatal":
            self.fatal = event["message"]
            self.state = BackendState.ERROR
            self._settled.set()
            log.error("jupyter_codestral: the embedded model cannot be used: %s", self.fatal)
        else:
            if "timings" in event:
                # Also for requests whose client left before the worker finished.
                self.last_timings = event["timings"]
                self.timings_seen += 1
            if (queue := self._pending.get(event.get("id", -1))) is not None:
                queue.put_nowait(event)

    def _send(self, command: dict[str, Any]) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write((json.dumps(command) + "\n").encode())

    async def aclose(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            # Its input closed, the worker writes what the model read to disk and exits.
            proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), SHUTDOWN_S)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    # -- completions -----------------------------------------------------------
    def _unavailable(self) -> Exception:
        if self.fatal:
            return backend_error(ErrorKind.LOADING, f"The embedded model cannot be used: {self.fatal}")
        if self.state in (BackendState.ASSEMBLING, BackendState.VERIFYING) and self.progress is not None:
            return backend_error(
                ErrorKind.LOADING, f"The embedded model is being prepared ({self.state} {self.progress:.0%})."
            )
        return backend_error(ErrorKind.LOADING, f"The embedded model is not ready yet ({self.state}).")

    async def stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        await self.start()
        if not self._ready.is_set():
            raise self._unavailable()
        req_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[req_id] = queue
        finished = False
        source = request.source.request
        prompt_format = self.settings.prompt
        richer = request.richer_context if prompt_format.reads_richer(self.template) else None
        prompts, nearer = prompt_format.render_all(self.template, request.context, richer)
        ahead = request.next_window
        command = {
            "op": "complete",
            "id": req_id,
            "prompts": prompts,
            "nearer": nearer,
            "next_window": None if ahead is None else self.settings.prompt.render(self.template, ahead),
            "max_tokens": request.max_tokens,
            "stop": list(request.stop),
            "prefetch": request.prefetch,
            "document": source.path if source is not None else None,
        }
        try:
            self._send(command)
            while True:
                event = await queue.get()
                if event["event"] == "text":
                    logprob = event.get("logprob")
                    yield Scored(event["text"], logprob, event["tokens"]) if logprob is not None else event["text"]
                elif event["event"] == "done":
                    timings = event.get("timings") or {}
                    finished = True
                    yield Usage.reported(timings.get("prompt_tokens"), timings.get("generated_tokens"))
                    return
                else:
                    finished = True
                    raise backend_error(
                        error_kind(event.get("kind")), event.get("message", "The embedded model failed.")
                    )
        finally:
            if not finished:
                self._send({"op": "cancel", "id": req_id})  # replaced by a newer request, or the client left
            self._pending.pop(req_id, None)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["base_url"] = None
        info["model_path"] = self.settings.model_path
        info["progress"] = self.progress
        info["restarts"] = self.restarts
        info["worker_pid"] = self._proc.pid if self._proc else None
        # What the worker kept of the last request's prompt, and what it keeps in all (tests and users read
        # these to see whether the model read a prompt again).
        info["cache"] = {key: self.last_timings.get(key) for key in CACHE_FIGURES} | {
            "read_ahead": self.last_ahead or None
        }
        if self.fatal:
            info["fatal"] = self.fatal
        return info
