"""The embedded model, for real: the bundled GGUF in a llama.cpp worker process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import cyclic_garbage, execute_cell, settle, the_app

from jupyter_codestral.embedded import model_files
from jupyter_codestral.embedded.model_files import BUNDLED, ModelFileError, ModelSpec, assemble, ensure_model

NOTEBOOK = [
    {"cell_type": "markdown", "source": "# Arrays\nCreate an array and compute its mean."},
    {"cell_type": "code", "source": "import numpy as np"},
    {"cell_type": "code", "source": "values = np.array([1, 2, 3, 4])\nmean = values."},
    {"cell_type": "code", "source": "print(mean)"},
]


# A completion that goes on for its whole budget (hundreds of numbers), however fast the machine.
LONG_LIST = "numbers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, "


@pytest.fixture
def codestral_config() -> dict[str, Any]:
    return {"backend": "embedded"}


async def wait_ready(jp_fetch: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    states = set()
    while time.monotonic() < deadline:
        status = json.loads((await jp_fetch("codestral", "status")).body)
        states.add(status["state"])
        if status["ready"]:
            return status
        assert status["state"] != "error", status
        await asyncio.sleep(0.1)
    raise AssertionError(f"the embedded model did not become ready; states seen: {states}")


def body(**kw: Any) -> dict[str, Any]:
    return {"cells": NOTEBOOK, "cell_index": 2, "cursor": len(NOTEBOOK[2]["source"]), "path": "arrays.ipynb", **kw}


@pytest.mark.slow
async def test_the_bundled_model_completes_a_notebook_cell(jp_fetch: Any, complete: Any) -> None:
    status = await wait_ready(jp_fetch)
    assert status["backend"] == "embedded" and status["model"] == BUNDLED.name
    code, reply = await complete(body())
    assert code == 200, reply
    assert reply["completion"].startswith("mean()"), reply
    code, lines = await complete(body(stream=True))
    assert code == 200 and lines[-1]["done"]
    assert "".join(line.get("delta", "") for line in lines[:-1]) == lines[-1]["completion"] == reply["completion"]


@pytest.mark.slow
async def test_an_embedded_completion_leaves_no_reference_cycles(jp_fetch: Any, complete: Any) -> None:
    await wait_ready(jp_fetch)
    await complete(body(stream=True))
    with cyclic_garbage() as garbage:
        for stream in (True, False):
            code, _ = await complete(body(stream=stream))
            assert code == 200
    assert garbage == []


@pytest.mark.slow
async def test_a_mid_line_completion_stops_at_the_end_of_the_line(jp_fetch: Any, complete: Any) -> None:
    await wait_ready(jp_fetch)
    cells = [{"cell_type": "code", "source": "import numpy as np\nx = np.zeros((3, 3))\nprint(x.sh)"}]
    cursor = cells[0]["source"].index("sh)") + 2
    code, reply = await complete({"cells": cells, "cell_index": 0, "cursor": cursor})
    assert code == 200 and "\n" not in reply["completion"]
    assert reply["completion"].startswith("ape"), reply


async def worker_timings(backend: Any, seen: int) -> dict[str, Any]:
    """The worker's figures for its next finished request (it may finish after the reply, once cut short)."""
    for _ in range(300):
        if backend.timings_seen > seen:
            return dict(backend.last_timings)
        await asyncio.sleep(0.01)
    raise AssertionError("the worker reported no timings")


@pytest.mark.slow
async def test_typing_reuses_the_kv_cache(jp_fetch: Any, complete: Any, jp_serverapp: Any) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    await complete(body(cursor=len("values = np.array([1, 2, 3, 4])\nmean = val")))
    await worker_timings(backend, 0)
    await complete(body())
    cache = await worker_timings(backend, 1)
    # Only the few characters typed since the last request are new to the model.
    assert cache["prompt_tokens"] - cache["cached_tokens"] <= 12, cache


@pytest.mark.slow
async def test_prefetch_warms_the_cache_without_a_completion(jp_fetch: Any, complete: Any, jp_serverapp: Any) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    code, reply = await complete(body(prefetch=True))
    assert code == 200 and reply["completion"] == ""
    await worker_timings(backend, 0)
    await complete(body())
    cache = await worker_timings(backend, 1)
    assert cache["prompt_tokens"] - cache["cached_tokens"] <= 1, cache


@pytest.mark.slow
async def test_a_newer_request_for_the_same_notebook_aborts_the_one_in_flight(
    jp_fetch: Any, server_url: str, jp_auth_header: dict[str, str]
) -> None:
    await wait_ready(jp_fetch)
    long_one = body(cells=[{"cell_type": "code", "source": LONG_LIST}], cell_index=0, cursor=len(LONG_LIST),
                    max_tokens=400)
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=60) as client:
        await client.get(f"{server_url}/status")  # one user (the login cookie, as in a browser)
        first = asyncio.create_task(client.post(f"{server_url}/complete", json=long_one))
        await asyncio.sleep(1.5)  # it is generating now
        second = await client.post(f"{server_url}/complete", json=body(path=long_one["path"]))
        first_reply = await first
    # 409: it was stopped before it finished (a finished one answers 200).
    assert first_reply.status_code == 409 and first_reply.json()["error"]["kind"] == "cancelled"
    assert second.status_code == 200 and second.json()["completion"].startswith("mean()")


@pytest.mark.slow
async def test_a_crashed_worker_gives_a_readable_error_and_restarts(
    jp_fetch: Any, server_url: str, jp_auth_header: dict[str, str], jp_serverapp: Any, complete: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    pid = backend.describe()["worker_pid"]
    slow = body(cells=[{"cell_type": "code", "source": LONG_LIST}], cell_index=0, cursor=len(LONG_LIST), max_tokens=400)
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=60) as client:
        pending = asyncio.create_task(client.post(f"{server_url}/complete", json=slow))
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        reply = await pending
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert error["kind"] == "worker_crashed" and "restarted" in error["message"]
    status = await wait_ready(jp_fetch)  # the server kept serving and the worker came back
    assert status["restarts"] == 1 and status["worker_pid"] != pid
    code, again = await complete(body())
    assert code == 200 and again["completion"].startswith("mean()")


# -- model files -----------------------------------------------------------------


def fake_parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    parts = []
    for i, chunk in enumerate(chunks, 1):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        parts.append(path)
    return parts


def small_spec(chunks: list[bytes], sha: str | None = None) -> ModelSpec:
    whole = b"".join(chunks)
    return ModelSpec("tiny", ("a", "b"), len(whole), sha or hashlib.sha256(whole).hexdigest())


def test_assembly_is_atomic_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 500]
    monkeypatch.setattr(model_files, "part_files", lambda spec: fake_parts(tmp_path, chunks))
    out = tmp_path / "cache"
    seen: list[tuple[int, int]] = []
    path = assemble(small_spec(chunks), out, progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == b"".join(chunks) and seen[-1] == (1504, 1504)
    assert [p.name for p in out.iterdir()] == ["tiny.gguf"]


def test_a_hash_mismatch_is_refused_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 500]
    monkeypatch.setattr(model_files, "part_files", lambda spec: fake_parts(tmp_path, chunks))
    out = tmp_path / "cache"
    with pytest.raises(ModelFileError, match="expected"):
        assemble(small_spec(chunks, sha="0" * 64), out)
    assert list(out.iterdir()) == []


def test_a_damaged_cached_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 500]
    spec = small_spec(chunks)
    (tmp_path / spec.filename).write_bytes(b"GGUF" + b"X" * 1500)  # same size, other bytes
    with pytest.raises(ModelFileError, match="will not be loaded"):
        ensure_model(spec, tmp_path)


def test_the_worker_refuses_a_model_file_with_the_wrong_hash(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_codestral.embedded.worker", "--model-path", str(bad), "--sha256", "1" * 64],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1]["event"] == "fatal" and "will not be loaded" in events[-1]["message"]


def test_missing_part_packages_are_explained() -> None:
    spec = ModelSpec("x", ("no_such_package_for_codestral",), 1, "0" * 64, extra="strong")
    with pytest.raises(ModelFileError, match=r"jupyter-codestral\[strong\]"):
        model_files.part_files(spec)


def test_the_bundled_model_parts_are_installed_and_add_up() -> None:
    parts = model_files.part_files(BUNDLED)
    assert len(parts) == 6 and sum(p.stat().st_size for p in parts) == BUNDLED.size


@pytest.mark.slow
async def test_notebooks_share_the_worker_fairly(jp_fetch: Any, server_url: str, jp_auth_header: dict[str, str]) -> None:
    """Newest wins within a notebook; every notebook still gets its completion."""
    await wait_ready(jp_fetch)
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=120) as client:
        await client.get(f"{server_url}/status")  # one user (the login cookie, as in a browser)

        async def ask(path: str, **kw: Any) -> httpx.Response:
            return await client.post(f"{server_url}/complete", json=body(path=path, max_tokens=24, **kw))

        stale = asyncio.create_task(ask("a.ipynb"))
        await asyncio.sleep(0.05)
        replies = await asyncio.gather(ask("a.ipynb"), ask("b.ipynb"), ask("c.ipynb"), ask("d.ipynb"))
        stale_reply = await stale
    assert stale_reply.status_code == 409  # superseded by the newer request for a.ipynb
    assert [r.status_code for r in replies] == [200, 200, 200, 200]
    assert all(r.json()["completion"].startswith("mean()") for r in replies)


# -- what the model has read stays read ----------------------------------------------


def code_cells(prefix: str, count: int) -> list[dict[str, str]]:
    """A notebook's worth of ordinary code cells (about 30 tokens each)."""
    return [{"cell_type": "code", "source": f"{prefix}_{i} = load_table('{prefix}', part={i})\n"
                                            f"{prefix}_{i}.describe()"} for i in range(count)]


async def timed(complete: Any, backend: Any, body_: dict[str, Any]) -> dict[str, Any]:
    """The worker's figures for one completion."""
    seen = backend.timings_seen
    code, reply = await complete(body_)
    assert code == 200, reply
    return await worker_timings(backend, seen)


@pytest.mark.slow
async def test_a_new_cell_after_running_the_one_before_reads_only_its_own_tokens(
    jp_fetch: Any, complete: Any, jp_serverapp: Any, kernel: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    kernel_id, client = kernel
    cells = [{"cell_type": "markdown", "source": "# Arrays\nSome numbers and their statistics."},
             *code_cells("table", 20), {"cell_type": "code", "source": "import numpy as np"}]
    _, count = await execute_cell(client, "import numpy as np")
    cells[-1]["execution_count"] = count
    # The user writes the next cell; the model has read the notebook up to it.
    writing = "values = np.arange(10)\nmean = values.mean()"
    cells.append({"cell_type": "code", "source": writing})
    at_end = {"cells": cells, "cell_index": len(cells) - 1, "cursor": len(writing), "path": "arrays.ipynb",
              "kernel_id": kernel_id, "max_tokens": 4}
    await timed(complete, backend, {**at_end, "prefetch": True})  # the frontend's, on entering the cell
    await timed(complete, backend, at_end)
    # Shift+Enter: the cell runs (the kernel now has `values` and `mean`) and a new cell opens.
    _, count = await execute_cell(client, writing)
    await settle(jp_serverapp, kernel_id)
    cells[-1]["execution_count"] = count
    cells.append({"cell_type": "code", "source": "print("})
    cache = await timed(complete, backend, {"cells": cells, "cell_index": len(cells) - 1, "cursor": 6,
                                            "path": "arrays.ipynb", "kernel_id": kernel_id, "max_tokens": 4})
    # New to the model: what the run produced (`values`, `mean`), the new cell's marker and `print(`.
    assert cache["prompt_tokens"] > 400 and 15 <= cache["read_tokens"] <= 60, cache
    assert not cache["restored"]


@pytest.mark.slow
async def test_two_notebooks_in_turn_keep_what_the_model_read(
    jp_fetch: Any, complete: Any, jp_serverapp: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend

    def at_end(prefix: str, typed: str) -> dict[str, Any]:
        cells = [*code_cells(prefix, 25), {"cell_type": "code", "source": typed}]
        return {"cells": cells, "cell_index": len(cells) - 1, "cursor": len(typed), "path": f"{prefix}.ipynb",
                "max_tokens": 4}

    # The user enters the cell (the frontend's prefetch reads its prompts), then types there.
    first_a = await timed(complete, backend, {**at_end("sales", "total = sales_3"), "prefetch": True})
    await timed(complete, backend, at_end("sales", "total = sales_3"))
    first_b = await timed(complete, backend, {**at_end("stock", "level = stock_7"), "prefetch": True})
    await timed(complete, backend, at_end("stock", "level = stock_7"))
    assert first_a["read_tokens"] > 400 and first_b["read_tokens"] > 400  # each read once, in full
    again_a = await timed(complete, backend, at_end("sales", "total = sales_3."))
    again_b = await timed(complete, backend, at_end("stock", "level = stock_7."))
    for again in (again_a, again_b):
        assert again["restored"] and again["read_tokens"] <= 12, again
    assert again_b["saved_prompts"] >= 2


@pytest.mark.slow
async def test_returning_to_a_cell_restores_what_the_model_read_there(
    jp_fetch: Any, complete: Any, jp_serverapp: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    # Long enough that the window of an early cell and that of the last cell begin in different places.
    cells = [*code_cells("part", 90), {"cell_type": "code", "source": "result = "}]
    end = {"cells": cells, "cell_index": len(cells) - 1, "cursor": 9, "path": "long.ipynb", "max_tokens": 4}
    await timed(complete, backend, end)
    early = [*cells[:12], {"cell_type": "code", "source": "check = "}, *cells[12:]]
    visit = await timed(complete, backend, {**end, "cells": early, "cell_index": 12, "cursor": 8})
    assert not visit["restored"]
    back = await timed(complete, backend, {**end, "cursor": 9})
    assert back["restored"] and back["read_tokens"] <= 4, back


@pytest.mark.slow
async def test_a_keystroke_during_the_prefetch_goes_on_from_what_it_has_read(
    jp_fetch: Any, server_url: str, jp_auth_header: dict[str, str], jp_serverapp: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    cells = [*code_cells("sheet", 40), {"cell_type": "code", "source": ""}]
    entered = {"cells": cells, "cell_index": len(cells) - 1, "cursor": 0, "path": "sheets.ipynb", "prefetch": True}
    typed = {**entered, "cells": [*cells[:-1], {"cell_type": "code", "source": "t"}], "cursor": 1, "max_tokens": 4,
             "prefetch": False}
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=120) as client:
        await client.get(f"{server_url}/status")  # one user (the login cookie, as in a browser)
        seen = backend.timings_seen
        prefetch = asyncio.create_task(client.post(f"{server_url}/complete", json=entered))
        await asyncio.sleep(1.0)  # the model is reading the notebook
        reply = await client.post(f"{server_url}/complete", json=typed)
        replaced = await prefetch
    assert replaced.status_code == 409 and reply.status_code == 200
    cache = await worker_timings(backend, seen + 1)
    # What the prefetch had read when the keystroke came was kept: the request went on from there.
    assert cache["cached_tokens"] >= 64 and cache["cached_tokens"] + cache["read_tokens"] == cache["prompt_tokens"]


async def ahead_event(backend: Any, seen: int, finished: bool | None = None) -> dict[str, Any]:
    """The worker's next report of reading a richer prompt ahead (the first that is ``finished``, if given)."""
    for _ in range(3000):
        if backend.aheads_seen > seen and finished in (None, backend.last_ahead["finished"]):
            return dict(backend.last_ahead)
        seen = backend.aheads_seen if finished is None else seen
        await asyncio.sleep(0.01)
    raise AssertionError("the worker did not report reading ahead")


def mid_notebook(typed: str) -> dict[str, Any]:
    """The user types in a cell with cells below it (about 450 tokens before it, 450 after)."""
    cells = [*code_cells("frame", 20), {"cell_type": "code", "source": typed}, *code_cells("later", 20)]
    return {"cells": cells, "cell_index": 20, "cursor": len(typed), "path": "mid.ipynb", "max_tokens": 4}


@pytest.mark.slow
async def test_a_prefetch_reads_the_later_cells_too_and_keystrokes_answer_from_them(
    jp_fetch: Any, complete: Any, jp_serverapp: Any
) -> None:
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    assert backend.settings.layout == "adaptive"  # the embedded model's default
    entered = await timed(complete, backend, {**mid_notebook("summary = "), "prefetch": True})
    assert not entered["richer"]
    typed = await timed(complete, backend, mid_notebook("summary = f"))
    # The prompt with the later cells was read by the prefetch: only the typed character (and the FIM
    # suffix after it) is new.
    assert typed["richer"] and typed["read_tokens"] <= 12, typed
    assert typed["prompt_tokens"] > entered["prompt_tokens"] + 300


@pytest.mark.slow
async def test_the_worker_reads_the_later_cells_ahead_between_keystrokes(
    jp_fetch: Any, complete: Any, jp_serverapp: Any
) -> None:
    status = await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    aheads = backend.aheads_seen
    first = await timed(complete, backend, mid_notebook("summary = "))
    assert not first["richer"]  # answered at once from the notebook up to the cursor
    # Idle: the worker reads the rest of the plain prompt (about 160 tokens), then the one with the later
    # cells (about 880 tokens), which the next keystroke stops partway. How long that takes depends on the
    # CPU (1 s and 5.5 s at 160 tokens/s, four times that on a slow one): the pause is timed on the speed
    # the worker measured at start-up, so that the keystroke lands in the second read on any machine.
    speed = status["cpu"]["read_tokens_per_s"]
    await asyncio.sleep(1.0 + 400 / speed)
    second = await timed(complete, backend, mid_notebook("summary = f"))
    assert not second["richer"] and second["read_tokens"] <= 12, second  # a keystroke does not wait for it
    stopped = await ahead_event(backend, aheads)
    assert not stopped["finished"] and stopped["read_tokens"] >= 64, stopped
    done = await ahead_event(backend, aheads + 1, finished=True)
    third = await timed(complete, backend, mid_notebook("summary = fr"))
    assert third["richer"] and third["read_tokens"] <= 12, third
    # What was read of it before the keystroke was kept (however little): only the rest was read after it.
    assert done["read_tokens"] <= third["prompt_tokens"] - 64, (stopped, done, third)


@pytest.mark.slow
@pytest.mark.parametrize("ahead", [True, False], ids=["read ahead", "not read ahead"])
async def test_a_new_cell_that_steps_the_window_finds_its_new_start_read_ahead(
    jp_fetch: Any, complete: Any, jp_serverapp: Any, kernel: Any, ahead: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ahead:  # (to show that the window steps there, and what the read-ahead saves)
        monkeypatch.setattr("jupyter_codestral.prompt_source.next_window", lambda *_: None)
    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    kernel_id, client = kernel
    cells: list[dict[str, Any]] = []
    for i in range(20):  # cells run in turn, each new cell entered after: the window is nearly full
        source = (f"part_{i} = list(range({i + 2}))\nsize_{i} = len(part_{i})  # how many rows the part has\n"
                  f"print(part_{i}[:3], size_{i})")
        _, count = await execute_cell(client, source)
        await settle(jp_serverapp, kernel_id)
        cells.append({"cell_type": "code", "source": source, "execution_count": count})
        await timed(complete, backend, {"cells": [*cells, {"cell_type": "code", "source": ""}],
                                        "cell_index": len(cells), "cursor": 0, "path": "steps.ipynb",
                                        "kernel_id": kernel_id, "prefetch": True})
    # The user writes a long cell: once it joins the window, the window drops a step of cells at its
    # start, and their variables lead the prompt (new text there).
    writing = "\n".join(f"total_{i} = sum(part_{i}) + len(part_{i})  # the sum and size" for i in range(20))
    at_end = {"cells": [*cells, {"cell_type": "code", "source": writing}], "cell_index": len(cells),
              "cursor": len(writing), "path": "steps.ipynb", "kernel_id": kernel_id, "max_tokens": 4}
    before = await timed(complete, backend, {**at_end, "prefetch": True})  # reads its prompt, then the next cell's
    _, count = await execute_cell(client, writing)
    await settle(jp_serverapp, kernel_id)
    cells.append({"cell_type": "code", "source": writing, "execution_count": count})
    entered = await timed(complete, backend, {"cells": [*cells, {"cell_type": "code", "source": ""}],
                                              "cell_index": len(cells), "cursor": 0, "path": "steps.ipynb",
                                              "kernel_id": kernel_id, "prefetch": True})
    assert not entered["restored"], entered
    if ahead:
        # New to the model: the run's notes (some of the totals) and the new cell's marker; the new start
        # and every cell after it were read ahead (1,365 tokens, 73 read, here).
        assert entered["read_tokens"] <= 120 and entered["cached_tokens"] >= 1000, (before, entered)
    else:  # the leading block of the dropped cells' variables: new text at the prompt's start (380 read here)
        assert entered["read_tokens"] >= 250, (before, entered)
