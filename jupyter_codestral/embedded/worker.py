"""The embedded model's worker process: llama.cpp behind JSON lines on stdin/stdout.

It runs apart from the Jupyter server so that a crash in native code (or an
out-of-memory kill) costs one completion, not the user's server.

Commands (one JSON object per line on stdin)::

    {"op": "complete", "id": 1, "prompts": ["..."], "max_tokens": 64, "stop": ["\\n"], "document": "a.ipynb"}
    {"op": "complete", "id": 2, "prompts": ["richer", "plain"], "nearer": "..."}   in order of preference
    {"op": "complete", "id": 3, "prompts": [...], "prefetch": true}   read the prompts only
    {"op": "complete", "id": 4, "prompts": [...], "next_window": "..."}   and read this one last, only ahead
    {"op": "cancel", "id": 1}

Events (one JSON object per line on stdout)::

    {"event": "state", "state": "assembling" | "verifying" | "loading" | "checking", "progress": 0.4}
    {"event": "state", "state": "ready", "model": "...", "cpu": {...}}   the self-check passed: kernels, speed
    {"event": "fatal", "message": "..."}          the model cannot be used; do not restart
    {"event": "text", "id": 1, "text": "...", "logprob": -0.3, "tokens": 2}   with its tokens' log-probabilities
    {"event": "done", "id": 1, "timings": {...}}
    {"event": "error", "id": 1, "kind": "cancelled" | "failed", "message": "...", "timings": {...}}
    {"event": "ahead", "read_tokens": 128, "finished": false}   reading the other prompts ahead stopped

A request is answered from the first of its prompts that is (nearly) as cheap to finish as the
cheapest, or from its nearer prompt (the cells nearest the cursor only) when that would take long
(``jobs.py``); the worker reads the others while no request waits (``scheduler.py``), then the
``next_window`` prompt (the one the window's next step will give: its start is new text to read).
What the model has read is kept, moved where new prompts have it, and saved in memory and on disk
(``prompt_cache.py``, ``disk_cache.py``); closing stdin writes what is read to disk before the worker
exits.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from . import DEFAULT_KV_CACHE_MB, DEFAULT_KV_DISK_MB
from .cpu import FEATURES, Kernels, cpu_flags, cpu_model, guard_process
from .model_files import BUNDLED


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


def resolve_model(args: argparse.Namespace, emit: Emitter) -> tuple[Path, str]:
    """The verified model file, and what identifies its saved states on disk (its sha256 where known)."""
    from .model_files import MODELS, ModelFileError, ensure_model, verify

    if args.model_path:
        path = Path(args.model_path).expanduser()
        if not path.is_file():
            raise ModelFileError(f"The model file {path} does not exist.")
        if args.sha256:
            emit("state", state="verifying", progress=0.0)
            verify(path, args.sha256, emit.progress("verifying"))
            return path, args.sha256
        stat = path.stat()
        unverified = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return path, hashlib.sha256(unverified.encode()).hexdigest()
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

    path = ensure_model(spec, progress=lambda d, t: emit.progress(steps["state"])(d, t), on_step=on_step)
    return path, spec.sha256


def forget_refused(disk: Any, policy_json: str | None) -> None:
    """Delete the saved states of documents the course policy refuses."""
    if not policy_json:
        return
    from ..policy import PathPolicy

    rules = json.loads(policy_json)
    allowed = rules.get("allowed")
    policy = PathPolicy(tuple(rules.get("disabled") or ()), None if allowed is None else tuple(allowed))
    disk.forget(lambda document: policy.reason([document]) is not None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_codestral.embedded.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=BUNDLED.name, help="a bundled model's name")
    parser.add_argument("--model-path", help="any GGUF file instead of a bundled model")
    parser.add_argument("--sha256", help="expected sha256 of --model-path")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--kernels",
        choices=[k.value for k in Kernels],
        default=Kernels.REPACK.value,
        help="CPU kernels: repack (never AMX), amx (AMX too, where the CPU has it), plain (no extra buffer types)",
    )
    parser.add_argument("--chunk-tokens", type=int, default=64, help="prompt tokens read between checks for a cancel")
    parser.add_argument("--cache-mb", type=int, default=DEFAULT_KV_CACHE_MB, help="memory for saved read prompts")
    parser.add_argument("--disk-mb", type=int, default=DEFAULT_KV_DISK_MB, help="disk for saved read prompts (0: none)")
    parser.add_argument("--disk-dir", help="where saved prompts go (default: the cache folder's kv/)")
    parser.add_argument(
        "--reuse",
        choices=("chunks", "prefix", "off"),
        default="chunks",
        help="what of the tokens read before a new prompt keeps (prefix, off: to measure)",
    )
    parser.add_argument("--policy", help="the course policy as JSON ({'disabled': [...], 'allowed': [...]})")
    parser.add_argument("--stop-token", action="append", default=[], help="a special token that ends a completion")
    args = parser.parse_args(argv)

    # A crash in native code (llama.cpp's kernels) writes the signal and the Python stack to stderr: the
    # server logs it, and names the signal even where it cannot learn the exit status.
    faulthandler.enable()
    # Our protocol owns stdout; anything native code prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    emit = Emitter(protocol)
    # Before llama.cpp (or numpy's BLAS) is loaded: AMX is refused here, or the extra buffer types go.
    flags = cpu_flags()
    guard = guard_process(Kernels(args.kernels), flags)
    threads = args.threads or os.cpu_count() or 1

    from .disk_cache import DiskCache
    from .engine import Engine
    from .jobs import Model
    from .model_files import cache_dir
    from .prompt_cache import PromptCache, Reuse
    from .scheduler import Scheduler

    try:
        path, model_id = resolve_model(args, emit)
        emit("state", state="loading", progress=None)
        engine = Engine(path, args.n_ctx, threads, max(1, args.chunk_tokens), guard)
        reuse = Reuse(args.reuse)
        disk = None
        if args.disk_mb > 0 and reuse != Reuse.OFF:
            folder = Path(args.disk_dir) if args.disk_dir else cache_dir() / "kv" / model_id[:16]
            disk = DiskCache(folder, args.disk_mb * 2**20)
            forget_refused(disk, args.policy)
        cache = PromptCache(engine, args.cache_mb * 2**20, reuse, disk)
        model = Model(engine, cache, args.stop_token)
    except Exception as exc:  # noqa: BLE001 - reported to the server, which shows it
        emit("fatal", message=str(exc))
        return
    # A crash in the CPU kernels happens here, where the server can restart the worker more safely.
    emit("state", state="checking", progress=None)
    try:
        check = engine.self_check()
    except RuntimeError as exc:  # a decode that failed without crashing: the server tries a safer start
        print(f"jupyter_codestral: the self-check failed: {exc}", file=sys.stderr)
        sys.exit(3)
    cpu = {
        "model": cpu_model(),
        "features": [f for f in FEATURES if f in flags],
        "build": sorted(name for name, on in engine.build.items() if on),
        "kernels": guard.kernels.value,
        "amx_denied": guard.amx_denied,
        "extra_buffers": guard.extra_buffers,
        "note": guard.note,
        "buffers": engine.buffers,
        "threads": threads,
        **check.to_json(),
    }
    emit("state", state="ready", progress=None, model=str(path), cpu=cpu)
    scheduler = Scheduler(model, emit)
    threading.Thread(target=scheduler.read_commands, args=(sys.stdin,), daemon=True).start()
    scheduler.serve()
    # The server went away: what is read goes to disk, for the next start.
    cache.persist_live()
    if disk is not None:
        disk.close()


if __name__ == "__main__":
    main()
