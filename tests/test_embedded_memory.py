"""What the embedded model keeps of what it read, for real: moved starts, the nearer prompt, restarts, the disk's limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_CACHE
from traitlets.config import Config

from jupyter_codestral.app import CodestralExtension
from jupyter_codestral.assembly import assemble
from jupyter_codestral.backends.embedded import EmbeddedBackend
from jupyter_codestral.request import parse_completion_request
from jupyter_codestral.router import Direct
from jupyter_codestral.service import CompletionService

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled model's file where every test finds it; no key in the environment (the embedded model)."""
    monkeypatch.setenv("JUPYTER_CODESTRAL_CACHE_DIR", MODEL_CACHE)
    for name in ("CODESTRAL_API_KEY", "MISTRAL_API_KEY", "JUPYTER_CODESTRAL_BACKEND", "JUPYTER_CODESTRAL_BACKENDS"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def embedded(disk: Path, **settings: Any) -> AsyncIterator[tuple[CompletionService, EmbeddedBackend]]:
    """The completion service on the embedded model (its worker started, then stopped: it writes what it read)."""
    options = CodestralExtension(
        config=Config({"CodestralExtension": {"backend": "embedded", "kv_disk_dir": str(disk), **settings}})
    )
    service = assemble(options).service
    assert isinstance(service.completer, Direct)
    backend = service.completer.backend
    assert isinstance(backend, EmbeddedBackend)
    await backend.wait_ready()
    try:
        yield service, backend
    finally:
        await service.aclose()


async def worker_figures(service: CompletionService, backend: EmbeddedBackend, body: dict[str, Any]) -> dict[str, Any]:
    """One request served as the server serves it; the worker's figures for it."""
    seen = backend.timings_seen
    async for _ in service.serve(parse_completion_request(json.dumps(body).encode()), "user"):
        pass
    for _ in range(500):
        if backend.timings_seen > seen:
            return dict(backend.last_timings)
        await asyncio.sleep(0.01)
    raise AssertionError("the worker reported no figures")


def cells_of(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"cell_type": "code", "source": f"{prefix}_{i} = load_table('{prefix}', part={i})\n{prefix}_{i}.describe()"}
            for i in range(count)]


def at_end(cells: list[dict[str, str]], typed: str, path: str = "long.ipynb", **extra: Any) -> dict[str, Any]:
    cells = [*cells, {"cell_type": "code", "source": typed}]
    return {"cells": cells, "cell_index": len(cells) - 1, "cursor": len(typed), "path": path, "max_tokens": 4, **extra}


async def test_when_the_window_drops_cells_at_its_start_what_stays_is_kept(tmp_path: Path) -> None:
    async with embedded(tmp_path / "kv") as (service, backend):
        cells = cells_of("part", 40)  # about 1,000 tokens: the window (1,024) is nearly full
        await worker_figures(service, backend, at_end(cells, "", prefetch=True))
        first = await worker_figures(service, backend, at_end(cells, "result = "))
        # Ten new cells later the window has moved on by a step: its first cells are dropped.
        grown = [*cells, *cells_of("more", 10)]
        moved = await worker_figures(service, backend, at_end(grown, "", prefetch=True))
        assert moved["prompt_tokens"] < first["prompt_tokens"] - 300  # (it dropped a step of about 500 tokens)
        # The cells that stay were moved into place, not read: the prefetch read the new cells' tokens only.
        new_cells = sum(len(c["source"]) + len("\n\n# %%\n") for c in grown[40:]) / 2.5  # (code: 3-4 characters a token)
        assert moved["read_tokens"] <= new_cells and moved["cached_tokens"] >= 300, (first, moved)
        typed = await worker_figures(service, backend, at_end(grown, "t"))
        assert typed["read_tokens"] <= 8 and not typed["nearer"], typed


async def test_a_cell_far_from_anything_read_answers_from_its_nearest_cells_first(tmp_path: Path) -> None:
    async with embedded(tmp_path / "kv") as (service, backend):
        notebook = cells_of("early", 60)
        body = {"cells": [*notebook[:30], {"cell_type": "code", "source": "x = "}, *notebook[30:]], "cell_index": 30,
                "cursor": 4, "path": "far.ipynb", "max_tokens": 4}
        aheads = backend.aheads_seen
        cold = await worker_figures(service, backend, body)
        # Nothing around the cell was read: the prompt of its nearest cells answers (a few hundred tokens),
        # the whole one is read after it, building on it.
        assert cold["nearer"] and cold["prompt_tokens"] < 500, cold
        # The user thinks; the worker reads the rest (about 8 s at 160 tokens/s, longer on a slower CPU).
        for _ in range(240 * 20):
            if backend.aheads_seen > aheads and backend.last_ahead.get("finished"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the worker did not finish reading the whole prompt: {backend.last_ahead}")
        warm = await worker_figures(service, backend, {**body, "cells": [*body["cells"][:30],
                                    {"cell_type": "code", "source": "x = 1"}, *body["cells"][31:]], "cursor": 5})
        assert not warm["nearer"] and warm["read_tokens"] <= 8, warm
        assert warm["prompt_tokens"] > cold["prompt_tokens"] + 300


async def test_a_notebook_read_before_a_restart_is_restored_from_disk(tmp_path: Path) -> None:
    notebook = cells_of("sales", 30)
    async with embedded(tmp_path / "kv") as (service, backend):
        read = await worker_figures(service, backend, at_end(notebook, "", prefetch=True))
        assert read["read_tokens"] > 500
    # The server restarts (the worker wrote what it read to disk when it stopped).
    async with embedded(tmp_path / "kv") as (service, backend):
        reopened = await worker_figures(service, backend, at_end(notebook, "t"))
        assert reopened["restored"] and reopened["read_tokens"] <= 8, reopened
        assert reopened["disk_prompts"] >= 1


async def test_nothing_is_kept_on_disk_for_the_course_policys_documents(tmp_path: Path) -> None:
    async with embedded(tmp_path / "kv") as (service, backend):
        await worker_figures(service, backend, at_end(cells_of("exam", 30), "", path="exams/final.ipynb", prefetch=True))
        await worker_figures(service, backend, at_end(cells_of("notes", 30), "", path="notes.ipynb", prefetch=True))
    kept = {json.loads(meta.read_text())["document"] for meta in (tmp_path / "kv").glob("*.json")}
    assert kept == {"exams/final.ipynb", "notes.ipynb"}
    # The teacher sets the course policy: the exam's saved prompts are deleted when the model starts.
    async with embedded(tmp_path / "kv", disabled_paths=["exams/**"]) as (service, backend):
        assert backend.describe()["cache"] is not None
    kept = {json.loads(meta.read_text())["document"] for meta in (tmp_path / "kv").glob("*.json")}
    assert kept == {"notes.ipynb"}


async def test_the_disk_holds_no_more_than_its_budget(tmp_path: Path) -> None:
    async with embedded(tmp_path / "kv", kv_disk_mb=8) as (service, backend):
        for name in ("a", "b", "c", "d"):  # each about 3 MB of KV
            await worker_figures(service, backend, at_end(cells_of(name, 10), "", path=f"{name}.ipynb", prefetch=True))
    size = sum(path.stat().st_size for path in (tmp_path / "kv").glob("*.kv"))
    assert 0 < size <= 8 * 2**20

