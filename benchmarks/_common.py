"""Helpers shared by the benchmarks: notebooks, child servers, statistics."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import websocket

from jupyter_codestral.embedded.cpu import cpu_flags, deny_amx, has_amx
from jupyter_codestral.evaluation import read_cells
from jupyter_codestral.stats import median, percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH_NOTEBOOKS = ROOT.parent / "shared" / "bench" / "notebooks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_cells(folder: Path = BENCH_NOTEBOOKS) -> list[list[dict[str, str]]]:
    """The benchmark notebooks as lists of ``{"cell_type", "source"}``, in file-name order."""
    notebooks = [read_cells(path) for path in sorted(folder.glob("*.ipynb"))]
    if not notebooks:
        raise SystemExit(f"No notebooks in {folder}; pass --notebooks DIR.")
    return notebooks


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median": median(ordered), "p95": percentile(ordered, 0.95),
            "p99": percentile(ordered, 0.99)}


def wait_model_ready(client: httpx.Client, base: str, timeout: float = 300.0) -> None:
    """Wait until ``codestral/status`` says the (embedded) model is ready."""
    deadline = time.monotonic() + timeout
    while not client.get(f"{base}/status").json()["ready"]:
        if time.monotonic() > deadline:
            raise SystemExit("the embedded model did not load")
        time.sleep(0.2)


def wait_for(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout:.0f} s")


@contextmanager
def fake_backend(delay: float = 0.0, text: str = "df.head()") -> Iterator[str]:
    """The loopback FIM server from the tests, in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_backends.py"), "--port", str(port), "--delay", str(delay), "--text", text],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def jupyter_server(*args: str, env: dict[str, str] | None = None, refuse_amx: bool = False,
                   ) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes]]]:
    """A real ``jupyter server`` with the extension; yields (codestral base URL, auth headers, process).

    Its log goes to ``server.log`` in its root folder: a pipe nobody reads
    would fill up under load and stop the server in the middle of a write.
    ``refuse_amx``: the server and its model worker never get the AMX permission (for code older than
    its own guard, ``embedded/cpu.py``, on a CPU where llama.cpp's AMX kernels crash)."""
    port, token = free_port(), secrets.token_hex(16)
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"codestral-bench-{port}"
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "server.log").open("wb")
    cmd = [
        sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser", "--allow-root",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.log_level=WARN", *args,
    ]
    child_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")} | (env or {})
    # Started in its root folder: what the notebooks' cells write (kernels run there) stays out of the tree.
    guard = deny_amx if refuse_amx and has_amx(cpu_flags()) else None  # a seccomp filter outlives exec
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.DEVNULL, stderr=log, cwd=root, preexec_fn=guard)
    headers = {"Authorization": f"token {token}"}
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/status", headers=headers)
        yield f"{base}/codestral", headers, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def execute(ws_url: str, headers: dict[str, str], code: str, raise_errors: bool = True,
            timeout: float = 120) -> dict[str, Any]:
    """Run code in the kernel like a notebook does (over the kernel's websocket).

    Returns the cell's result data, with its execution number under ``"execution_count"``."""
    ws = websocket.create_connection(ws_url, header=[f"{k}: {v}" for k, v in headers.items()], timeout=timeout)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "bench", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    result: dict[str, Any] = {}
    try:
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_input":
                result["execution_count"] = msg["content"]["execution_count"]
            if msg["msg_type"] == "execute_result":
                result |= msg["content"]["data"]
            if msg["msg_type"] == "error" and raise_errors:
                raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return result
    finally:
        ws.close()


@contextmanager
def source_tree(revision: str | None) -> Iterator[dict[str, str]]:
    """Environment for a server running ``revision``'s code (nothing for the working tree)."""
    if revision is None:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="codestral-before-") as folder:
        archive = subprocess.run(["git", "archive", revision, "jupyter_codestral"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield {"PYTHONPATH": folder + os.pathsep + os.environ.get("PYTHONPATH", "")}


def pauses(line: str, start: int = 0) -> list[int]:
    """Where a user typing ``line`` from ``start`` pauses: after each word and each run of punctuation."""
    points, kind = [], None
    for i in range(start, len(line)):
        ch = line[i]
        now = "word" if (ch.isalnum() or ch == "_") else ("space" if ch.isspace() else "punct")
        if kind is not None and now != kind and kind != "space":
            points.append(i)
        kind = now
    points.append(len(line))
    return sorted(set(points))
