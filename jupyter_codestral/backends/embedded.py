"""The embedded model: a llama.cpp worker process driven over JSON lines.

The worker is started with the Jupyter server and loads the model in the
background.  The completion service keeps at most one request per document
in flight (a newer one stops the older, whose stream then sends the worker
a ``cancel``), so the worker's first-come queue serves notebooks in turn.
If the worker dies, waiting requests get a readable error and it restarts.

The worker reads and writes a few tokens before it says it is ready, so a crash in llama.cpp's CPU
kernels (the AMX kernels on some Intel CPUs) happens at start-up.  A worker that dies before it is
ready is restarted in a safer configuration (:func:`safer_configs`: no extra CPU kernels, then one
thread), each step said in the status in a sentence; one that crashes ``MAX_CRASHES`` times in a row
without finishing a completion is ``failed``: completions answer 503 with the reason (and routes
with another backend answer from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import signal
import sys
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ..edit_prompt import CHATML_END, render_chatml
from ..embedded.cpu import Kernels, cpu_flags, has_amx
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
# A worker that crashes this often in a row, with no completion finished between, is not restarted.
MAX_CRASHES = 3


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker is started with that a crash in native code may depend on."""

    kernels: Kernels
    threads: int | None  # None: every core

    def describe(self) -> str:
        kernels = {
            Kernels.REPACK: "llama.cpp's repacked CPU kernels",
            Kernels.AMX: "AMX kernels",
            Kernels.PLAIN: "no extra CPU kernels",
        }[self.kernels]
        return kernels if self.threads != 1 else f"{kernels}, on one thread"


def safer_configs(kernels: Kernels, threads: int | None) -> list[WorkerConfig]:
    """The configured worker, then each safer one to try after a crash at start-up."""
    ladder = [WorkerConfig(kernels, threads)]
    if kernels != Kernels.PLAIN:
        ladder.append(WorkerConfig(Kernels.PLAIN, threads))
    if threads != 1:
        ladder.append(WorkerConfig(Kernels.PLAIN, 1))
    return ladder


def stepped_down(crashed: WorkerConfig, now: WorkerConfig, amx_cpu: bool) -> str:
    """The sentence the status says after a crash at start-up moved the worker one step down."""
    if crashed.kernels == Kernels.AMX and amx_cpu:
        what = "with AMX kernels on this CPU"
    elif crashed.kernels == Kernels.REPACK:
        what = "with llama.cpp's repacked CPU kernels on this CPU"
    else:
        what = f"with {crashed.describe()}"
    doing = "running without them" if now.threads == crashed.threads else "running on one thread"
    return f"The embedded model crashed {what}; {doing}, slower"


# What the worker's faulthandler writes first when a signal kills it ("Fatal Python error: Segmentation fault").
_FATAL_SIGNALS = {
    "Segmentation fault": signal.SIGSEGV,
    "Bus error": signal.SIGBUS,
    "Aborted": signal.SIGABRT,
    "Floating point exception": signal.SIGFPE,
    "Illegal instruction": signal.SIGILL,
}
_FATAL_LINE = re.compile(r"^Fatal Python error: (" + "|".join(_FATAL_SIGNALS) + ")")


def fatal_signal(stderr_line: str) -> signal.Signals | None:
    """The signal a worker's stderr line says killed it (its faulthandler's "Fatal Python error: ...")."""
    match = _FATAL_LINE.match(stderr_line)
    return _FATAL_SIGNALS[match.group(1)] if match else None


def exit_reason(code: int, killed_by: signal.Signals | None = None) -> str:
    """A worker's exit as people read it: the signal that killed it, or its exit code.

    Where something else in the server's process reaps children first, asyncio cannot learn the exit
    status and reports 255; the signal the worker's stderr named (``killed_by``) then says what it was."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if killed_by is not None:
        return f"killed by {killed_by.name}"
    return f"exit code {code}"


class EmbeddedBackend(Backend):
    name = "embedded"
    supports_prefetch = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.state = BackendState.IDLE  # until start(): at once on a server's start, or when a route first needs it
        self.progress: float | None = None
        self.fatal: str | None = None
        self.restarts = 0
        self.ladder = safer_configs(Kernels(settings.cpu_kernels), settings.threads)
        self.rung = 0  # which of the ladder's configurations the worker runs
        self.crashes = 0  # in a row, with no completion finished between
        self._stepped: str | None = None  # the last step down the ladder, in a sentence
        self.cpu: dict[str, Any] | None = None  # the worker's CPU kernels and speed (its ready event)
        self._amx_cpu = has_amx(cpu_flags())
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
        self._killed_by: signal.Signals | None = None  # what the running worker's stderr says killed it
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()  # ready, or never will be
        self._closing = False
        if self.fatal:
            self._settled.set()

    # -- worker lifetime ------------------------------------------------------
    @property
    def config(self) -> WorkerConfig:
        return self.ladder[self.rung]

    @property
    def notice(self) -> str | None:
        """What the status says of a worker that runs more safely than configured, or that failed."""
        if self.state == BackendState.FAILED:
            return f"The embedded model cannot run on this machine: {self.fatal}"
        if self._stepped is None:
            return None
        cpu = self.cpu if self.state == BackendState.READY else None
        if not cpu:
            return f"{self._stepped}."
        read, written = cpu["read_tokens_per_s"], cpu["write_tokens_per_s"]
        return f"{self._stepped} (prompts read at {read:.0f} tokens/s, written at {written:.0f} tokens/s)."

    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jupyter_codestral.embedded.worker"]
        if self.settings.model_path:
            cmd += ["--model-path", self.settings.model_path]
            if self.settings.model_sha256:
                cmd += ["--sha256", self.settings.model_sha256]
        else:
            cmd += ["--model", self.settings.model]
        config = self.config
        if config.threads:
            cmd += ["--threads", str(config.threads)]
        cmd += ["--kernels", config.kernels.value]
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
        if self.state == BackendState.FAILED:
            raise self._unavailable()
        if self.fatal:
            raise backend_error(ErrorKind.LOADING, self.fatal)

    def _given_up(self) -> bool:
        """The model cannot be used (the worker said so), or the server is stopping: no restart."""
        return self.fatal is not None or self._closing

    async def _supervise(self) -> None:
        failures = 0
        while not self._given_up():
            started = asyncio.get_running_loop().time()
            code, was_ready = await self._run_worker()
            if self._given_up():
                break
            self.crashes += 1
            crashed = self.config
            reason = exit_reason(code, self._killed_by)
            tail = " | ".join(list(self._stderr_tail)[-3:])
            if self.crashes >= MAX_CRASHES:
                self._fail(reason, tail)
                break
            self.restarts += 1
            if not was_ready and self.rung + 1 < len(self.ladder):
                # A crash before ready is a crash in the self-check: the kernels or threads this machine
                # cannot run. The next configuration at once.
                self.rung += 1
                self._stepped = stepped_down(crashed, self.config, self._amx_cpu)
                log.warning(
                    "jupyter_codestral: the embedded model worker crashed at start-up with %s (%s; %s); "
                    "restarting with %s",
                    crashed.describe(),
                    reason,
                    tail or "nothing on stderr",
                    self.config.describe(),
                )
                continue
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.warning(
                "jupyter_codestral: the embedded model worker stopped (%s); restarting in %.1f s", reason, delay
            )
            await asyncio.sleep(delay)

    def _fail(self, reason: str, tail: str) -> None:
        """Crashed too often: not restarted; completions say why (a route's next backend answers)."""
        tried = "; ".join(config.describe() for config in self.ladder[: self.rung + 1])
        self.fatal = (
            f"its worker crashed {self.crashes} times in a row ({reason}), tried with: {tried}. "
            "It is not restarted; name another backend (CodestralExtension.backends), or run "
            "`jupyter codestral doctor` and report what it prints."
        )
        self.state = BackendState.FAILED
        self._settled.set()
        for queue in self._pending.values():
            queue.put_nowait({"event": "error", "kind": ErrorKind.WORKER_CRASHED, "message": self.notice})
        log.error("jupyter_codestral: the embedded model failed: %s (stderr: %s)", self.fatal, tail or "nothing")

    async def _run_worker(self) -> tuple[int, bool]:
        """Run one worker until it exits: its exit code, and whether it had said it was ready."""
        self.state, self.progress = BackendState.STARTING, None
        self._ready.clear()
        self._settled.clear()
        self._killed_by = None
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
            was_ready = self._ready.is_set()
            self._ready.clear()
            if self.fatal is None:
                self.state = BackendState.RESTARTING
                stopped = exit_reason(code, self._killed_by)
                reason = f"The embedded model process stopped ({stopped}); it is being restarted."
                for queue in self._pending.values():
                    queue.put_nowait({"event": "error", "kind": ErrorKind.WORKER_CRASHED, "message": reason})
        return code, was_ready

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._killed_by = self._killed_by or fatal_signal(line)
                self._stderr_tail.append(line)
                log.debug("embedded model worker: %s", line)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "state":
            self.state, self.progress = BackendState(event["state"]), event.get("progress")
            if self.state == BackendState.READY:
                self.cpu = event.get("cpu")
                if self._stepped:
                    log.warning("jupyter_codestral: %s", self.notice)
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
            if kind == "done":
                self.crashes = 0  # it runs on this machine
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
        if self.state == BackendState.FAILED:
            return backend_error(ErrorKind.WORKER_CRASHED, self.notice or "The embedded model failed.")
        if self.fatal:
            return backend_error(ErrorKind.LOADING, f"The embedded model cannot be used: {self.fatal}")
        if self.state in (BackendState.ASSEMBLING, BackendState.VERIFYING) and self.progress is not None:
            return backend_error(
                ErrorKind.LOADING, f"The embedded model is being prepared ({self.state} {self.progress:.0%})."
            )
        return backend_error(ErrorKind.LOADING, f"The embedded model is not ready yet ({self.state}).")

    def stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return self._exchange(request, self._completion_command)

    async def chat_stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        # The worker's prompt ends with the answer's opening: it goes out with the model's first text (not
        # before, so that a hedged route still waits for the model itself).
        opening = request.chat_opening
        async with contextlib.aclosing(self._exchange(request, self._chat_command)) as items:
            async for item in items:
                if opening and not isinstance(item, Usage):
                    yield opening
                    opening = ""
                yield item

    def _completion_command(self, request: FimRequest) -> dict[str, Any]:
        """The worker's ``complete`` command for a completion: its prompts, in order of preference."""
        source = request.source.request
        prompt_format = self.settings.prompt
        richer = request.richer_context if prompt_format.reads_richer(self.template) else None
        prompts, nearer = prompt_format.render_all(self.template, request.context, richer, request.budget)
        ahead = request.next_window
        return {
            "op": "complete",
            "prompts": prompts,
            "nearer": nearer,
            "next_window": None if ahead is None else self.settings.prompt.render(self.template, ahead),
            "max_tokens": request.max_tokens,
            "stop": list(request.stop),
            "prefetch": request.prefetch,
            "document": source.path if source is not None else None,
        }

    def _chat_command(self, request: FimRequest) -> dict[str, Any]:
        """The worker's ``complete`` command for an edit's chat, through the bundled Instruct model's own chat
        template.  The worker reads it like any prompt: what it read of the notebook before is kept where it can
        be."""
        source = request.source.request
        return {
            "op": "complete",
            "prompts": [render_chatml(list(request.chat), request.chat_opening)],
            "max_tokens": request.max_tokens,
            "stop": [CHATML_END],
            "prefetch": request.prefetch,
            "document": source.path if source is not None else None,
        }

    async def _exchange(
        self, request: FimRequest, command_of: Callable[[FimRequest], dict[str, Any]]
    ) -> AsyncGenerator[BackendItem, None]:
        """Send the worker one ``complete`` command (built once it is ready); its text as it comes, then the tokens
        it used."""
        await self.start()
        if not self._ready.is_set():
            raise self._unavailable()
        req_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[req_id] = queue
        finished = False
        try:
            self._send({**command_of(request), "id": req_id})
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
        info["cpu"] = self.cpu
        info["notice"] = self.notice
        if self.fatal:
            info["fatal"] = self.fatal
        return info
