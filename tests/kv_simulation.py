"""The embedded worker's bookkeeping of what the model has read, run without the model.

:class:`TokensOnly` stands in for :class:`~jupyter_codestral.embedded.engine.Engine`: it tokenizes with the
model's real vocabulary (loaded alone, without the weights) and tracks which tokens its context holds,
where, and what is parked, as the engine does with llama.cpp's KV; nothing is computed.  The worker's
own :class:`~jupyter_codestral.embedded.jobs.Model` and :class:`~jupyter_codestral.embedded.prompt_cache.PromptCache`
run on it unchanged, so the tokens it reads are the ones the worker would read.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jupyter_codestral.backends import KINDS
from jupyter_codestral.context import FimContext
from jupyter_codestral.embedded.jobs import Job, Model
from jupyter_codestral.embedded.kv_reuse import Chunk, Tokens
from jupyter_codestral.embedded.prompt_cache import PromptCache, Reuse
from jupyter_codestral.evaluation import read_cells
from jupyter_codestral.kernel_variables import KernelState, Snapshot, Variable, bound_names
from jupyter_codestral.prompt_source import PromptSource
from jupyter_codestral.request import Cell, CompletionRequest
from jupyter_codestral.templates import TEMPLATES, PromptFormat


class TokensOnly:
    """The engine's interface, over token arrays (a saved state is one byte a token)."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, batch: int = 64) -> None:
        import llama_cpp

        self._vocab = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        self.n_ctx = n_ctx
        self.batch_size = batch
        self.batch_end = 0
        self.tokens: Tokens = np.empty(0, dtype=np.intc)
        self.parked: dict[int, Tokens] = {}  # target position -> the chunk's tokens
        self.read = 0  # tokens decoded in all

    def tokenize(self, text: str) -> Tokens:
        return np.array(self._vocab.tokenize(text.encode(), add_bos=False, special=True), dtype=np.intc)

    def end_tokens(self) -> set[int]:
        return set()

    def special_token(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return int(ids[0]) if len(ids) == 1 else None

    def decode(self, tokens: Tokens, stop: Callable[[], bool] | None = None) -> int:
        done = 0
        while done < len(tokens):  # in batches, as the engine reads
            if stop is not None and stop():
                break
            part = tokens[done : done + self.batch_size]
            self.tokens = np.concatenate([self.tokens, part])
            done += len(part)
        self.read += done
        return done

    def truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]

    def park(self, chunks: list[Chunk], keep: int) -> None:
        self.parked = {chunk.target: self.tokens[chunk.source : chunk.source + chunk.length] for chunk in chunks}
        self.truncate(keep)

    def unpark(self, chunk: Chunk, tokens: Tokens) -> None:
        assert chunk.target == len(self.tokens)
        assert np.array_equal(self.parked.pop(chunk.target), tokens)  # the KV moved is the KV of these tokens
        self.tokens = np.concatenate([self.tokens, tokens])

    def drop_parked(self) -> None:
        self.parked = {}

    def save(self) -> Any:
        return (ctypes.c_uint8 * len(self.tokens))()

    def load(self, data: Any, tokens: Tokens) -> bool:
        self.tokens = tokens
        self.parked = {}
        return True


def cache_on(engine: TokensOnly, kv_cache_mb: int = 256, reuse: Reuse = Reuse.CHUNKS) -> PromptCache:
    """The worker's prompt cache on ``engine``, with its memory budget in the engine's one byte a token
    (the model's KV is about 12 KB a token)."""
    return PromptCache(engine, kv_cache_mb * 2**20 // (12 * 1024), reuse)  # type: ignore[arg-type]


# -- authoring every notebook of a folder, cell by cell ---------------------------------------------------------


QWEN = TEMPLATES["qwen"]
EMBEDDED = KINDS["embedded"]
BUDGET = EMBEDDED.budget
FORMAT = PromptFormat(EMBEDDED.layout)


def job(
    model: Model, cells: list[Cell], index: int, cursor: int, kernel: KernelState | None = None, ahead: bool = True
) -> Job:
    """The worker's job for a request at ``cursor`` in cell ``index``, with the prompts the embedded backend
    sends (``ahead``: with the next window's prompt, when it is near)."""
    request = CompletionRequest(tuple(cells), index, cursor, path="notebook.ipynb")
    source = PromptSource(request, kernel)
    context = source.context(BUDGET)
    prompts, nearer = FORMAT.render_all(QWEN, context, source.context(BUDGET.richer))
    next_window = source.next_window(BUDGET) if ahead else None
    tokenize = model.tokenize
    return Job(
        0,
        [tokenize(p, 128) for p in prompts],
        128,
        [],
        False,
        "notebook.ipynb",
        None if nearer is None else tokenize(nearer, 128),
        next_window=None if next_window is None else tokenize(FORMAT.render(QWEN, next_window), 128),
    )


class Kernel:
    """A kernel that runs the notebook's cells: each run binds what the cell assigns, described as a
    kernel describes arrays (the snapshot after each run, as the server keeps them)."""

    def __init__(self) -> None:
        self.count = 0
        self.variables: dict[str, Variable] = {}
        self.state = KernelState(())

    def run(self, cell: Cell) -> Cell:
        self.count += 1
        for name in sorted(bound_names(cell.source)):
            self.variables.pop(name, None)
            self.variables[name] = Variable(name, "ndarray", f"ndarray, shape ({self.count}, 4), dtype float64")
        snapshot = Snapshot(self.count, tuple(reversed(self.variables.values())))  # most recent first
        self.state = KernelState((*self.state.snapshots, snapshot))
        return cell._replace(execution_count=self.count)


def notebooks(folder: Path) -> Iterator[tuple[str, list[Cell]]]:
    for path in sorted(folder.glob("*.ipynb")):
        yield path.name, [Cell(c["cell_type"], c["source"]) for c in read_cells(path)]


def idle() -> bool:
    """No request waits: a read ahead runs to its end."""
    return False


def entering_new_cells(
    model_file: Path, folder: Path, reuse: Reuse = Reuse.CHUNKS, kernel: bool = False, ahead: bool = True
) -> list[int]:
    """For each code cell of each notebook, written in turn: the tokens the worker must read for the new
    empty cell's prompt after it read the cell above.

    As the frontend does: on entering a code cell, a prefetch of its prompts; the user's last request in
    the cell, at its end; while a markdown cell is written, a prefetch of the code cell that follows it.
    With ``kernel``, each code cell is run once written, before the next is entered: its variables go
    after it, and those of cells the window drops lead the prompt.  The notes of that run are new text
    no worker can have read: they are not counted.  ``ahead``: the start the window's next step gives
    the prompt is read ahead when that step is near (the default)."""
    moments = []
    for _, cells in notebooks(folder):
        engine = TokensOnly(model_file)
        model = Model(engine, cache_on(engine, reuse=reuse), list(QWEN.stop))  # type: ignore[arg-type]
        runner = Kernel() if kernel else None
        state = None

        written: list[Cell] = []
        started = False
        for cell in cells:
            if cell.cell_type != "code":
                written.append(cell)  # while it is written, the prefetch of the code cell after it
                model.read_ahead(job(model, [*written, Cell("code", "")], len(written), 0, state, ahead), idle)
                continue
            entered = job(model, [*written, Cell("code", "")], len(written), 0, state, ahead)
            if started:  # (the first code cell: nothing was read before it)
                moments.append(
                    max(0, model.cache.unread(entered.prompts[-1]) - run_notes(model, written, state, entered))
                )
            model.read_ahead(entered, idle)
            model.read_ahead(job(model, [*written, cell], len(written), len(cell.source), state, ahead), idle)
            if runner is not None:
                cell = runner.run(cell)
                state = runner.state
            written.append(cell)
            started = True
    return moments


def entering_after_pasted_cells(model_file: Path, folder: Path, every: int = 3, ahead: bool = True) -> list[int]:
    """The authoring replay's way of writing, with a kernel: every ``every``-th code cell is written (a
    prefetch on entering it, the last request at its first line's end); the rest of it, and the cells up to
    the next one written, are pasted and run at once.  For each written cell after a notebook's first: the
    tokens the worker must read on entering it, besides the text that came since its last request (the
    rest of the cell above, the pasted cells, the runs' notes: new text no worker can have read)."""
    moments = []
    for _, cells in notebooks(folder):
        engine = TokensOnly(model_file)
        model = Model(engine, cache_on(engine), list(QWEN.stop))  # type: ignore[arg-type]
        runner = Kernel()
        written: list[Cell] = []
        above: int | None = None  # the cell written last
        code = 0
        for cell in cells:
            code += cell.cell_type == "code"
            if cell.cell_type != "code" or (code - 1) % every:
                written.append(runner.run(cell) if cell.cell_type == "code" else cell)  # pasted (and run)
                continue
            state = runner.state if runner.count else None
            new_cell = [*written, Cell("code", "")]
            entered = job(model, new_cell, len(written), 0, state, ahead)
            if above is not None:
                came = _tokens_since(model, new_cell, state, above)
                moments.append(max(0, model.cache.unread(entered.prompts[-1]) - came))
            model.read_ahead(entered, idle)
            line = cell.source.split("\n")[0]
            model.read_ahead(job(model, [*written, Cell("code", line)], len(written), len(line), state, ahead), idle)
            above = len(written)
            written.append(runner.run(cell))
    return moments


def _tokens_since(model: Model, cells: list[Cell], kernel: KernelState | None, above: int) -> int:
    """The tokens of the new last cell's prompt from the end of cell ``above``'s first line (where the last
    request was) to the new cell: what was pasted and run since.  (That place is found by marking it.)"""

    def prompt(cells: list[Cell]) -> tuple[str, FimContext]:
        request = CompletionRequest(tuple(cells), len(cells) - 1, 0, path="notebook.ipynb")
        context = PromptSource(request, kernel).context(BUDGET)
        return FORMAT.render_all(QWEN, context)[0][-1], context

    text, context = prompt(cells)
    first, newline, rest = cells[above].source.partition("\n")
    marked = [*cells]
    marked[above] = cells[above]._replace(source=first + MARK + newline + rest)
    start = prompt(marked)[0].find(MARK)
    end = text.rfind(context.before) + len(context.before)
    if not 0 <= start < end:  # the cell above left the window: all of it came since
        start = text.rfind(context.before)
    return len(model.tokenize(text[start:end], 128))


MARK = "\u2063"  # (an invisible separator: no cell has it)


def run_notes(model: Model, written: list[Cell], kernel: KernelState | None, entered: Job) -> int:
    """The tokens of the notes the last run added to ``entered``'s prompt (its cell's variables)."""
    if kernel is None:
        return 0
    last = written[-1]
    if last.cell_type != "code" or last.execution_count is None:
        return 0
    cells = [*written[:-1], last._replace(execution_count=None), Cell("code", "")]
    unrun = job(model, cells, len(written), 0, kernel, ahead=False)
    return max(0, len(entered.prompts[-1]) - len(unrun.prompts[-1]))


def moving_down(model_file: Path, folder: Path, reuse: Reuse = Reuse.CHUNKS) -> list[int]:
    """For each code cell of each (whole) notebook, the cursor moving down from the cell above: the tokens
    the worker must read for its prompt (the cursor at its start) after it read the cell above's prompts
    (the cursor at its end; above a markdown cell, the prefetch of the code cell that follows it)."""
    moments = []
    for _, cells in notebooks(folder):
        engine = TokensOnly(model_file)
        model = Model(engine, cache_on(engine, reuse=reuse), list(QWEN.stop))  # type: ignore[arg-type]
        started = False
        for index, cell in enumerate(cells):
            if cell.cell_type != "code":
                following = index + 1 < len(cells) and cells[index + 1].cell_type == "code"
                after = cells if following else [*cells[: index + 1], Cell("code", ""), *cells[index + 1 :]]
                model.read_ahead(job(model, after, index + 1, 0), idle)
                continue
            entered = job(model, cells, index, 0)
            if started:
                moments.append(model.cache.unread(entered.prompts[-1]))
            at_end = job(model, cells, index, len(cell.source))
            model.read_ahead(at_end, idle)
            started = True
    return moments


def summary(moments: list[int]) -> dict[str, Any]:
    """How many tokens the moments cost the worker: the share within 64, the median, p95 and the most."""
    values = np.array(moments)
    return {
        "moments": len(values),
        "within_64": float((values <= 64).mean()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
        "total": int(values.sum()),
    }
