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
from collections.abc import AsyncIterator
from typing import Any

from ..errors import backend_error
from ..local.model_files import MODELS
from ..templates import render_prompt, template_for_model
from .base import Backend, BackendSettings, FimRequest

log = logging.getLogger(__name__)
# A worker that dies again soon after starting waits longer before the next try.
RESTART_DELAYS = (0.2, 1.0, 5.0, 15.0)


class LocalBackend(Backend):
    name = "local"
    supports_prefetch = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.state = "starting"
        self.progress: float | None = None
        self.fatal: str | None = None
        self.restarts = 0
        spec = MODELS.get(settings.model)
        if settings.model_path is None and spec is None:
            self.state, self.fatal = "error", (
                f"Unknown embedded model {settings.model!r}; known: {', '.join(MODELS)}. "
                "Set CodestralExtension.model_path to use another GGUF file."
            )
        self.template = template_for_model(settings.model, settings.template or (spec.template if spec else None))
        self.last_timings: dict[str, Any] = {}
        self.timings_seen = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # -- worker lifetime ------------------------------------------------------
    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jupyter_codestral.local.worker"]
        if self.settings.model_path:
            cmd += ["--model-path", self.settings.model_path]
        else:
            cmd += ["--model", self.settings.model]
        if self.settings.threads:
            cmd += ["--threads", str(self.settings.threads)]
        if not self.settings.kv_cache:
            cmd.append("--no-cache")
        for token in self.template.stop:
            cmd += ["--stop-token", token]
        return cmd

    async def start(self) -> None:
        if self._supervisor is None and self.fatal is None:
            self._supervisor = asyncio.create_task(self._supervise())

    async def wait_ready(self, timeout: float) -> None:
        """For tools and tests: wait until the model is loaded (or failed)."""
        await self.start()
        async with asyncio.timeout(timeout):
            while not self._ready.is_set() and self.fatal is None:
                await asyncio.sleep(0.05)
        if self.fatal:
            raise backend_error("loading", self.fatal)

    async def _supervise(self) -> None:
        failures = 0
        while self.fatal is None:
            started = asyncio.get_running_loop().time()
            await self._run_worker()
            if self.fatal is not None:
                break
            self.restarts += 1
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.warning("jupyter_codestral: the local model worker stopped; restarting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _run_worker(self) -> None:
        self.state, self.progress = "starting", None
        self._ready.clear()
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
                self.state = "restarting"
                reason = f"The local model process stopped (exit code {code}); it is being restarted."
                for queue in self._pending.values():
                    queue.put_nowait({"event": "error", "kind": "worker_crashed", "message": reason})

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                log.debug("local worker: %s", line)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "state":
            self.state, self.progress = event["state"], event.get("progress")
            if self.state == "ready":
                self._ready.set()
        elif kind == "fatal":
            self.fatal = event["message"]
            self.state = "error"
            log.error("jupyter_codestral: the local model cannot be used: %s", self.fatal)
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
            return backend_error("loading", f"The local model cannot be used: {self.fatal}")
        if self.state in ("assembling", "verifying") and self.progress is not None:
            return backend_error("loading", f"The local model is being prepared ({self.state} {self.progress:.0%}).")
        return backend_error("loading", f"The local model is not ready yet ({self.state}).")

    async def stream(self, request: FimRequest) -> AsyncIterator[str]:
        await self.start()
        if not self._ready.is_set():
            raise self._unavailable()
        req_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[req_id] = queue
        finished = False
        try:
            self._send(
                {
                    "op": "complete",
                    "id": req_id,
                    "prompt": render_prompt(
                        self.template, request.context, self.settings.layout, self.settings.kernel_file
                    ),
                    "max_tokens": 0 if request.prefetch else request.max_tokens,
                    "stop": list(request.stop),
                }
            )
            while True:
                event = await queue.get()
                if event["event"] == "text":
                    yield event["text"]
                elif event["event"] == "done":
                    finished = True
                    return
                else:
                    finished = True
                    raise backend_error(event.get("kind", "failed"), event.get("message", "The local model failed."))
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
        info["cache"] = {k: self.last_timings.get(k) for k in ("prompt_tokens", "cached_tokens")}
        if self.fatal:
            info["fatal"] = self.fatal
        return info
