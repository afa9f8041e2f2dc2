from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
import pytest
from fake_backends import FAKE_KEY, FakeFimServer

pytest_plugins = ["pytest_jupyter.jupyter_server", "contract_check"]

# The tests give each server a temporary HOME; share one model cache between
# them so the bundled model is assembled once, as on a user's machine.
MODEL_CACHE = os.environ.get("JUPYTER_CODESTRAL_CACHE_DIR") or platformdirs.user_cache_dir("jupyter-codestral")


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """The types of ours (and tenacity's) that only the cyclic garbage collector would free,
    among what the block allocates: filled in when the block ends."""
    found: list[str] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector would free is kept in gc.garbage
    try:
        yield found
        gc.collect()
        names = {f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage}
        found.extend(sorted(n for n in names if n.startswith(("jupyter_codestral", "tenacity"))))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def serve_fake(loop: Any) -> Iterator[FakeFimServer]:
    """A loopback backend on the test server's event loop, for as long as the fixture lives."""
    fake = FakeFimServer()

    async def start() -> None:
        fake.start()

    loop.run_until_complete(start())
    yield fake
    loop.run_until_complete(fake.stop())


@pytest.fixture
def fake_backend(jp_asyncio_loop: Any) -> Iterator[FakeFimServer]:
    yield from serve_fake(jp_asyncio_loop)


@pytest.fixture
def codestral_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra ``CodestralExtension`` settings for one test (parametrize it indirectly, or edit it before
    the server starts)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(fake_backend: FakeFimServer, codestral_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                     tmp_path: Path) -> dict[str, Any]:
    for name in ("CODESTRAL_API_KEY", "MISTRAL_API_KEY", "JUPYTER_CODESTRAL_BACKEND", "JUPYTER_CODESTRAL_URL",
                 "JUPYTER_CODESTRAL_MODEL", "JUPYTER_CODESTRAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CODESTRAL_API_KEY", FAKE_KEY)
    monkeypatch.setenv("JUPYTER_CODESTRAL_CACHE_DIR", MODEL_CACHE)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_codestral": True}, "allow_root": True},
        "CodestralExtension": {
            "backend": "mistral",
            "url": fake_backend.url,
            "retries": 1,
            "timeout": 2.0,
            # What the embedded model keeps on disk, for this test alone.
            "kv_disk_dir": str(tmp_path / "kv"),
            **codestral_config,
        },
    }


async def wait_until(check: Callable[[], Any], seconds: float = 1.0, step: float = 0.01) -> None:
    """Wait until ``check()`` is true, or ``seconds`` have passed (the caller then asserts what it wanted)."""
    for _ in range(max(1, round(seconds / step))):
        if check():
            return
        await asyncio.sleep(step)


def the_app(jp_serverapp: Any) -> Any:
    """The running CodestralExtension of a test server."""
    (app,) = jp_serverapp.extension_manager.extension_apps["jupyter_codestral"]
    return app


def write_notebook(path: Path, cells: list[dict[str, str]], metadata: dict[str, Any] | None = None) -> Path:
    """An nbformat 4 notebook file with these cells."""
    nb_cells = [{"cell_type": c["cell_type"], "metadata": c.get("metadata", {}), "source": c["source"],
                 **({"outputs": [], "execution_count": None} if c["cell_type"] == "code" else {})} for c in cells]
    path.write_text(json.dumps({"cells": nb_cells, "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


NOTEBOOK = [
    {"cell_type": "markdown", "source": "# Sales analysis\nLoad the data first."},
    {"cell_type": "code", "source": "import pandas as pd\n%matplotlib inline"},
    {"cell_type": "code", "source": "df = pd.read_csv('sales.csv')\ndf."},
    {"cell_type": "raw", "source": "RAW-CELL-TEXT"},
    {"cell_type": "code", "source": "df.plot()"},
    {"cell_type": "markdown", "source": "## Conclusion"},
]


def notebook_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cells": NOTEBOOK, "cell_index": 2, "cursor": len(NOTEBOOK[2]["source"]), "path": "sales.ipynb"}
    body.update(overrides)
    return body


@pytest.fixture
def complete(jp_fetch: Callable[..., Any]) -> Callable[..., Any]:
    """POST to codestral/complete; returns (status, parsed body or NDJSON lines)."""

    async def _complete(body: Any, raw: bool = False) -> tuple[int, Any]:
        data = body if raw else json.dumps(body)
        # Generous: the embedded model reads a cold prompt slowly on a busy machine.
        response = await jp_fetch("codestral", "complete", method="POST", body=data, raise_error=False,
                                  request_timeout=120)
        text = response.body.decode()
        if response.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            return response.code, [json.loads(line) for line in text.splitlines() if line.strip()]
        return response.code, json.loads(text)

    return _complete


@pytest.fixture
def server_url(jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The running test server's ``codestral`` base URL, for clients other than jp_fetch."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}codestral"


# -- live kernels ---------------------------------------------------------------


async def start(jp_serverapp: Any, name: str = "python3") -> tuple[str, Any]:
    manager = jp_serverapp.kernel_manager
    kernel_id = await manager.start_kernel(kernel_name=name)
    client = manager.get_kernel(kernel_id).client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return kernel_id, client


async def run(client: Any, code: str) -> list[str]:
    """Execute like a user does; return what was printed."""
    printed, _ = await execute_cell(client, code)
    return printed


async def execute_cell(client: Any, code: str) -> tuple[list[str], int]:
    """Execute like a user does; return what was printed and the cell's execution number."""
    msg_id = client.execute(code)
    printed: list[str] = []
    while True:
        msg = await client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = await client.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            assert reply["content"]["status"] == "ok", reply["content"]
            return printed, int(reply["content"]["execution_count"])


async def settle(jp_serverapp: Any, kernel_id: str, state: str = "idle") -> None:
    kernel = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    for _ in range(500):
        if kernel.execution_state == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"kernel never became {state}")


@pytest.fixture
def kernel(jp_serverapp: Any, jp_asyncio_loop: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """A running kernel (python3 unless parametrized) and a client to it, shut down afterwards."""
    name = getattr(request, "param", "python3")
    kernel_id, client = jp_asyncio_loop.run_until_complete(start(jp_serverapp, name))
    yield kernel_id, client
    client.stop_channels()
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_kernel(kernel_id, now=True))
