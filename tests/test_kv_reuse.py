"""What the embedded model keeps of what it read, without running it: plans, the prompt cache's bookkeeping, the
disk, and the tokens a new cell costs on every cell of the benchmark notebooks."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODEL_CACHE
from kv_simulation import TokensOnly, cache_on, entering_new_cells, moving_down, summary

from jupyter_codestral.embedded.disk_cache import DiskCache
from jupyter_codestral.embedded.jobs import Job, Model
from jupyter_codestral.embedded.kv_reuse import Chunk, Plan, Read, plan_reuse
from jupyter_codestral.embedded.model_files import BUNDLED, ensure_model

BENCH_NOTEBOOKS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "notebooks"


def tokens(*runs: range | list[int]) -> np.ndarray:
    return np.array([t for run in runs for t in run], dtype=np.intc)


# -- plans ---------------------------------------------------------------------------------------------


def test_a_moved_start_keeps_what_stays_and_reads_only_what_is_new() -> None:
    read = tokens([1], range(100, 300), range(500, 600))  # a header, the cells dropped, the cells kept
    prompt = tokens([1], range(500, 600), range(900, 910))  # the header, the cells kept, new text
    plan = plan_reuse(Read(read), Read(prompt))
    assert plan.prefix == 1 and plan.chunks == (Chunk(source=201, target=1, length=100),)
    assert plan.unread == 10


def test_text_inserted_before_what_was_read_is_read_and_the_rest_moves_after_it() -> None:
    read = tokens([1], range(500, 600), [7])
    prompt = tokens([1], range(100, 140), range(500, 600), [8])
    plan = plan_reuse(Read(read), Read(prompt))
    assert plan == Plan(len(prompt), prefix=1, chunks=(Chunk(source=1, target=41, length=100),))
    assert plan.unread == 41  # the inserted text, and the prompt's last token


def test_short_runs_are_read_again_and_the_last_token_always_is() -> None:
    read = tokens(range(10, 20), range(100, 110))
    plan = plan_reuse(Read(read), Read(tokens(range(50, 60), range(100, 110))), min_chunk=16)
    assert plan.kept == 0
    same = tokens(range(10, 60))
    assert plan_reuse(Read(same), Read(same)).kept == len(same) - 1


# -- the prompt cache's bookkeeping, on tokens alone ----------------------------------------------------------


@pytest.fixture(scope="module")
def model_file() -> Path:
    return ensure_model(BUNDLED, Path(MODEL_CACHE))


def test_a_read_cancelled_halfway_leaves_a_copy_of_what_was_there(model_file: Path) -> None:
    engine = TokensOnly(model_file)
    cache = cache_on(engine)
    near = tokens([1], range(500, 700), [2])
    ready = cache.prepare(near)
    cache.read(near, ready.plan, lambda: False)
    assert len(engine.tokens) == len(near) - 1
    whole = tokens([1], range(100, 400), range(500, 700), [2])  # the earlier cells go before what was read
    ready = cache.prepare(whole, keep_live=True)
    assert ready.plan.unread == 301 and list(engine.parked) == [301]
    finished, read = cache.read(whole, ready.plan, lambda: len(engine.tokens) > 100)
    assert not finished and not engine.parked  # stopped: what was parked is dropped...
    back = cache.prepare(near)
    assert back.restored and back.plan.unread == 1  # ...and the copy saved first comes back


def test_a_prompt_stopped_after_a_few_tokens_keeps_them_for_when_its_reading_goes_on(model_file: Path) -> None:
    """Reading ahead, stopped by a keystroke after one batch: what it read is saved before the request's prompt
    takes the context, however short (shorter than a copy is otherwise worth), and the reading goes on from it."""
    engine = TokensOnly(model_file)
    cache = cache_on(engine)
    plain = tokens([1], range(500, 700), [2])
    ready = cache.prepare(plain)
    cache.read(plain, ready.plan, lambda: False)
    richer = tokens([3], range(900, 1100), [1], range(500, 700), [2])
    ready = cache.prepare(richer, keep_live=True)
    finished, read = cache.read(richer, ready.plan, lambda: len(engine.tokens) >= 40)
    assert not finished and 0 < read < 128
    typed = tokens([1], range(500, 700), [2, 5])
    cache.read(typed, cache.prepare(typed).plan, lambda: False)
    assert cache.unread(richer, moves=False) == len(richer) - read


def test_the_richer_prompt_is_read_as_it_is_and_answers_once_read(model_file: Path) -> None:
    """The richer prompt puts the later cells before the earlier ones: KV of the earlier cells moved from the
    plain prompt never saw them, so the richer prompt keeps only the start it shares, and is read whole
    (while the user thinks); the plain prompt still moves what it can (here, out of the richer one)."""
    engine = TokensOnly(model_file)
    model = Model(engine, cache_on(engine), [])
    plain = tokens([1], range(500, 700), [2])  # the notebook up to the cursor
    richer = tokens([3], range(900, 960), [1], range(500, 700), [2])  # the later cells first
    job = Job(0, [richer, plain], 16, [], prefetch=True)
    assert not job.moves(richer) and job.moves(plain)
    read, done = model.read_ahead(job, lambda: False)
    assert done and read == len(richer) - 1  # read whole, not moved; the plain prompt moves what it holds from it
    assert model.choose(job) is richer
    moved = tokens([1], range(520, 700), [4])  # the window's start moved: the plain prompt moves what stays
    assert model.cache.unread(moved) <= 2


def test_a_prompt_is_found_on_disk_after_a_restart(tmp_path: Path, model_file: Path) -> None:
    engine = TokensOnly(model_file)
    disk = DiskCache(tmp_path, 2**20)
    cache = cache_on(engine)
    cache.disk = disk
    prompt = tokens([1], range(500, 800), [2])
    ready = cache.prepare(prompt, document="a.ipynb")
    cache.read(prompt, ready.plan, lambda: False)
    cache.persist_live()
    disk.close()
    again = TokensOnly(model_file)
    after = cache_on(again)
    after.disk = DiskCache(tmp_path, 2**20)
    ready = after.prepare(tokens([1], range(500, 800), [3, 2]))
    assert ready.source == "disk" and ready.plan.unread == 2


def test_the_disk_stays_within_its_budget_and_forgets_what_the_policy_refuses(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 3000)
    for n, document in enumerate(["a.ipynb", "exams/b.ipynb", "c.ipynb", "d.ipynb"]):
        state = tokens(range(n * 1000, n * 1000 + 100))
        disk.put(state, bytes(1000), document)
    disk.flush()
    assert len(disk.entries) == 3 and disk.used_bytes <= 3000  # the oldest went first
    assert disk.forget(lambda document: document.startswith("exams/")) == 1
    reopened = DiskCache(tmp_path, 3000)
    assert sorted(e.document for e in reopened.entries.values()) == ["c.ipynb", "d.ipynb"]
    assert not list(tmp_path.glob("*.partial"))


def test_saved_states_are_private_and_a_crash_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "kv"
    disk = DiskCache(folder, 2**20)
    disk.put(tokens(range(100)), bytes(500), "a.ipynb")
    disk.close()
    assert folder.stat().st_mode & 0o777 == 0o700  # the states hold the notebooks' text
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o600}
    (folder / ".0123.kv.partial").write_bytes(bytes(10))  # a write cut short
    (folder / "4567.kv").write_bytes(bytes(10))  # a state whose description was never written
    reopened = DiskCache(folder, 2**20)
    assert len(reopened.entries) == 1
    assert sorted(path.suffix for path in folder.iterdir()) == [".json", ".kv"]


# -- every cell of the benchmark notebooks ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario",
    [entering_new_cells, moving_down, partial(entering_new_cells, kernel=True)],
    ids=["new last cell", "one cell down", "new last cell, live kernel"],
)
def test_a_new_cell_costs_only_its_own_tokens_on_every_benchmark_notebook(scenario: Any, model_file: Path) -> None:
    assert list(BENCH_NOTEBOOKS.glob("*.ipynb")), f"no benchmark notebooks in {BENCH_NOTEBOOKS}"
    figures = summary(scenario(model_file, BENCH_NOTEBOOKS))
    print(json.dumps(figures))
    assert figures["moments"] >= 300
    assert figures["within_64"] >= 0.95 and figures["max"] <= 256, figures
