"""The embedded model's worker process: llama.cpp behind JSON lines on stdin/stdout.

It runs apart from the Jupyter server so that a crash in native code (or an
out-of-memory kill) costs one completion, not the user's server.

Commands (one JSON object per line on stdin)::

    {"op": "complete", "id": 1, "prompt": "...", "max_tokens": 64, "stop": ["\\n"]}
    {"op": "cancel", "id": 1}

Events (one JSON object per line on stdout)::

    {"event": "state", "state": "assembling" | "verifying" | "loading" | "ready", "progress": 0.4}
    {"event": "fatal", "message": "..."}          the model cannot be used; do not restart
    {"event": "text", "id": 1, "text": "..."}
    {"event": "done", "id": 1, "timings": {...}}
    {"event": "error", "id": 1, "kind": "cancelled" | "failed", "message": "..."}

One generation runs at a time.  A ``cancel`` for the running generation
stops it inside llama.cpp (its abort callback is polled during the matrix
work), so even a long prompt evaluation stops within milliseconds.  Prompts
are matched against the KV cache, so a prompt that begins like the previous
one only pays for its new tokens.
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO


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


class Generator:
    """Owns the llama.cpp model and runs one completion at a time."""

    def __init__(self, model_path: Path, n_ctx: int, threads: int, use_cache: bool, stop_tokens: list[str]) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_batch=256,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.use_cache = use_cache
        self.last_timings: dict[str, Any] = {}
        self.abort = threading.Event()
        # Polled by llama.cpp during decoding; returning True aborts it.
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self.abort.is_set())
        llama_cpp.llama_set_abort_callback(self.llm._ctx.ctx, self._abort_cb, None)
        self.stop_ids = {self.llm.token_eos()}
        for text in stop_tokens:
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])

    def cached_prefix(self, tokens: list[int]) -> int:
        n = 0
        for a, b in zip(self.llm._input_ids, tokens):
            if a != b:
                break
            n += 1
        return n

    def complete(self, cmd: dict[str, Any], emit: Emitter) -> None:
        llm, req_id = self.llm, cmd["id"]
        start = time.perf_counter()
        tokens = llm.tokenize(cmd["prompt"].encode(), add_bos=False, special=True)
        max_tokens = int(cmd.get("max_tokens", 64))
        room = llm.n_ctx() - max(max_tokens, 1) - 1
        if len(tokens) > room:
            tokens = tokens[-room:]  # the cursor end matters most
        if not self.use_cache:
            llm.reset()
        cached = self.cached_prefix(tokens)
        stops = [s for s in cmd.get("stop", []) if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, generated = "", 0, 0
        first_token: float | None = None
        try:
            for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                if self.abort.is_set():
                    raise Cancelled
                first_token = first_token or time.perf_counter()
                if max_tokens == 0 or token in self.stop_ids:
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
                    emit("text", id=req_id, text=text[sent : len(text) - held])
                    sent = len(text) - held
                if generated >= max_tokens:
                    break
        except RuntimeError as exc:  # llama_decode returned "aborted"
            if self.abort.is_set():
                raise Cancelled from None
            raise RuntimeError(f"llama.cpp failed: {exc}") from None
        else:
            if len(text) > sent:
                emit("text", id=req_id, text=text[sent:])
        finally:
            end = time.perf_counter()
            self.last_timings = {
                "prompt_tokens": len(tokens),
                "cached_tokens": cached,
                "generated_tokens": generated,
                "worker_first_token_ms": round(((first_token or end) - start) * 1000, 2),
                "worker_total_ms": round((end - start) * 1000, 2),
            }
        emit("done", id=req_id, timings=self.last_timings)


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
        raise ModelFileError(f"Unknown bundled model {args.model!r}; known: {', '.join(MODELS)}. "
                             "Set model_path to use another GGUF file.")
    steps = {"state": "verifying"}

    def on_step(step: str) -> None:
        steps["state"] = step
        emit("state", state=step, progress=0.0)

    return ensure_model(spec, progress=lambda d, t: emit.progress(steps["state"])(d, t), on_step=on_step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_codestral.local.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4_k_m", help="a bundled model's name")
    parser.add_argument("--model-path", help="any GGUF file instead of a bundled model")
    parser.add_argument("--sha256", help="expected sha256 of --model-path")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
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
        generator = Generator(path, args.n_ctx, args.threads or os.cpu_count() or 1, not args.no_cache, args.stop_token)
    except Exception as exc:  # noqa: BLE001 - reported to the server, which shows it
        emit("fatal", message=str(exc))
        return
    emit("state", state="ready", progress=None, model=str(path))

    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancelled: set[int] = set()
    running: dict[str, int | None] = {"id": None}
    lock = threading.Lock()

    def read_commands() -> None:
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
            except ValueError:
                continue
            if cmd.get("op") == "cancel":
                with lock:
                    cancelled.add(cmd["id"])
                    if running["id"] == cmd["id"]:
                        generator.abort.set()
            else:
                commands.put(cmd)
        commands.put(None)  # the server went away

    threading.Thread(target=read_commands, daemon=True).start()
    while (cmd := commands.get()) is not None:
        req_id = cmd.get("id")
        with lock:
            skip = req_id in cancelled
            cancelled.discard(req_id)
            if not skip:
                running["id"] = req_id
                generator.abort.clear()
        if skip:
            emit("error", id=req_id, kind="cancelled", message="Superseded by a newer request.")
            continue
        try:
            generator.complete(cmd, emit)
        except Cancelled:
            emit("error", id=req_id, kind="cancelled", message="Superseded by a newer request.",
                 timings=generator.last_timings)
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the worker
            emit("error", id=req_id, kind="failed", message=str(exc))
        finally:
            with lock:
                running["id"] = None
                cancelled.discard(req_id)


if __name__ == "__main__":
    main()
