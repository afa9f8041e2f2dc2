"""A real OpenAI-compatible server that users run: llama-cpp-python's own, as the README starts it
(``python -m jupyter_codestral.llama_server``: ``llama_cpp.server`` kept off llama.cpp's AMX kernels).

It serves the bundled 0.5B model on loopback as the ``strong`` backend of a route.  What these tests
found out about it (and the README says):

- it takes our raw FIM prompt on ``/v1/completions`` (the Qwen FIM tokens are read as special tokens);
- it stops generating when we drop the connection: it checks for a disconnect after every token
  ("Disconnected from client" in its log), so a superseded keystroke does not keep its one model
  busy (and with ``interrupt_requests``, on by default, a newer request interrupts the running one);
- its stream ignores ``stream_options.include_usage``, so its tokens are counted as estimates;
- its ``/v1/chat/completions`` answers edits with the model's own chat template.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODEL_CACHE, the_app, wait_until

from jupyter_codestral.embedded.model_files import BUNDLED, ensure_model

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python's [server] extra")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaCppServer:
    def __init__(self, process: subprocess.Popen[str], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    model = ensure_model(BUNDLED, Path(MODEL_CACHE))
    port = free_port()
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "jupyter_codestral.llama_server", "--model", str(model), "--model_alias", BUNDLED.name,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    server = LlamaCppServer(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{server.url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, server.output()
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def codestral_config(llama_cpp_server: LlamaCppServer) -> dict[str, Any]:
    strong = {"backend": "openai", "url": llama_cpp_server.url, "model": BUNDLED.name,
              "first_token_timeout_ms": 60_000}
    # (An edit's chat prompt takes the server seconds to read on a slow CPU, before its first byte.)
    return {"backends": {"strong": strong}, "routes": {"block": ["strong"], "line": ["strong"], "fix": ["strong"]},
            "timeout": 60.0}


def new_line_in(source: str) -> dict[str, Any]:
    cells = [{"cell_type": "code", "source": "import pandas as pd\nimport numpy as np"},
             {"cell_type": "code", "source": source}]
    return {"cells": cells, "cell_index": 1, "cursor": len(source), "path": "real-server.ipynb"}


async def test_the_real_server_answers_a_block_route(complete: Any, jp_fetch: Any,
                                                    llama_cpp_server: LlamaCppServer) -> None:
    # The launcher said which CPU kernels it left llama.cpp (never AMX, unless asked for).
    said = llama_cpp_server.output()
    assert "jupyter_codestral: CPU kernels:" in said and "AMX model buffer" not in said, said[:2000]
    status, body = await complete(new_line_in("def mean_of(values):\n    "))
    assert status == 200, body
    assert body["route"] == "block" and body["backend"] == "strong"
    assert "return" in body["completion"] or "sum(" in body["completion"], body["completion"]
    usage = json.loads((await jp_fetch("codestral", "status")).body)["usage"]["backends"]["strong"]
    # llama_cpp.server's stream has no usage figures: the tokens are counted, and labelled, as estimates.
    assert usage["requests"] == 1 and usage["estimated"] == 1 and usage["prompt_tokens"] > 0


async def test_the_real_server_stops_generating_when_the_request_is_cancelled(
    jp_serverapp: Any, server_url: str, jp_auth_header: dict[str, str], llama_cpp_server: LlamaCppServer
) -> None:
    before = llama_cpp_server.output().count("Disconnected from client")
    long = {**new_line_in("# all the prime numbers below 1000, one per line\nprimes = [\n"), "stream": True,
            "max_tokens": 500}
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=60) as client:
        async with client.stream("POST", f"{server_url}/complete", json=long) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.strip() and "delta" in json.loads(line):
                    break  # text is streaming: the user typed on, the browser aborts
    # Our relay drops its connection to the server, and the server notices.
    await wait_until(lambda: llama_cpp_server.output().count("Disconnected from client") > before, 10, 0.1)
    assert llama_cpp_server.output().count("Disconnected from client") > before, llama_cpp_server.output()[-2000:]
    usage = the_app(jp_serverapp).service.usage.day()["backends"]["strong"]
    assert usage["cancelled"] == 1 and usage["cancelled_prompt_tokens"] > 0


async def test_the_real_server_fixes_a_cell_through_its_chat_api(jp_fetch: Any, llama_cpp_server: LlamaCppServer) -> None:
    # /v1/chat/completions: the server applies the model's own chat template (the GGUF's).
    source = "def mean(values):\n    return sum(values) / len(value)\n"
    error = {"output_type": "error", "ename": "NameError", "evalue": "name 'value' is not defined",
             "traceback": ["NameError: name 'value' is not defined"]}
    body = {"cells": [{"cell_type": "code", "source": source, "outputs": [error]}], "cell_index": 0, "kind": "fix",
            "path": "real-server.ipynb"}
    response = await jp_fetch("codestral", "edit", method="POST", body=json.dumps(body), raise_error=False,
                              request_timeout=120)
    reply = json.loads(response.body)
    assert response.code == 200, reply
    assert reply["route"] == "fix" and reply["backend"] == "strong"
    # The wire, not the 0.5B's skill (benchmarks measure that; through this server's template and sampling it
    # often gives the cell back unchanged): what comes back is the cell's code, no prose, no fences.
    replacement = reply["replacement"]
    namespace: dict[str, Any] = {}
    exec(compile(replacement, "<fixed>", "exec"), namespace)
    assert callable(namespace["mean"]) and "```" not in replacement, replacement
