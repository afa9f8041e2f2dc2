"""The running kernel's variables in the prompt, placed so that caches survive.

A notebook shows what each cell produced right after it; the prompt does the
same with the kernel's variables.  After each executed cell come comment
lines for the variables that cell binds, as the kernel described them right
after that execution (``# df: DataFrame, 2 rows, columns {...}``).  An
execution therefore only adds text after the cell it ran, and the notebook
text read before it stays valid in a model's KV cache.

Variables that no visible cell explains (defined by cells above the prompt's
window, or outside the notebook) go in a block leading the prompt.  That
block depends neither on the text being typed nor on which cell the cursor
is in (beyond the window's start), so moving between cells does not change
it either.

Everything here is a pure function of the request and the kernel's history.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

# One attached comment line, and the lines attached to one cell, at most.
MAX_LINE_CHARS = 300
MAX_LINES_PER_CELL = 6


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # "DataFrame", "module", "function", "class", "int", ...
    description: str  # what follows the name: "DataFrame, 2 rows, columns {...}"

    def line(self) -> str:
        if self.kind == "module":
            return (
                f"{self.name}: module" if self.description == self.name else f"{self.name} = module {self.description}"
            )
        if self.kind == "function":
            return f"def {self.name}{self.description}"
        if self.kind == "class":
            return f"class {self.name}{self.description}"
        return f"{self.name}: {self.description}"


@dataclass(frozen=True)
class Snapshot:
    """The kernel's variables right after its execution number ``execution_count``."""

    execution_count: int
    variables: tuple[Variable, ...]  # most recently defined first
    _by_name: dict[str, Variable] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {v.name: v for v in self.variables})

    def get(self, name: str) -> Variable | None:
        return self._by_name.get(name)


@dataclass(frozen=True)
class KernelState:
    """The snapshots taken of one kernel, oldest first."""

    snapshots: tuple[Snapshot, ...]

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def after(self, execution_count: int | None) -> Snapshot | None:
        """The first snapshot taken after the execution numbered ``execution_count``."""
        if execution_count is None:
            return None
        return next((s for s in self.snapshots if s.execution_count >= execution_count), None)

    def changed_by(self, execution_count: int | None) -> set[str]:
        """Names whose description that execution created or changed (as far as the snapshots tell)."""
        snapshot = self.after(execution_count)
        if snapshot is None:
            return set()
        index = self.snapshots.index(snapshot)
        before = self.snapshots[index - 1] if index else Snapshot(0, ())
        return {v.name for v in snapshot.variables if before.get(v.name) != v}


# -- what a cell's code binds and mentions -------------------------------------


def _parse(source: str) -> ast.Module | None:
    """The cell as Python, with IPython magics and shell lines blanked out."""
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    if source.lstrip().startswith("%%"):
        return None  # a cell magic: not Python
    lines = ["pass" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _target_names(target: ast.expr) -> Iterable[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)
    elif isinstance(target, (ast.Subscript, ast.Attribute)):
        # `df["total"] = ...` changes df: it belongs after this cell too.
        base: ast.expr = target
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            base = base.value
        if isinstance(base, ast.Name):
            yield base.id


def _statement_names(node: ast.stmt) -> Iterable[str]:
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield from _target_names(target)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
        yield from _target_names(node.target)
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if item.optional_vars is not None:
                yield from _target_names(item.optional_vars)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.asname or alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
        for alias in node.names:
            if alias.name != "*":
                yield alias.asname or alias.name
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        # `df.dropna(inplace=True)` changes df in place.
        call = node.value
        method = call.func
        if (
            isinstance(method, ast.Attribute)
            and isinstance(method.value, ast.Name)
            and any(k.arg == "inplace" for k in call.keywords)
        ):
            yield method.value.id


def _walk_statements(body: Sequence[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements at the cell's level, inside blocks but not inside functions or classes."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for block in ("body", "orelse", "finalbody"):
            yield from _walk_statements(getattr(node, block, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            yield from _walk_statements(handler.body)


@lru_cache(maxsize=4096)
def bound_names(source: str) -> tuple[str, ...]:
    """Names a Python cell binds or changes, in order, each once."""
    module = _parse(source)
    if module is None:
        return ()
    names: dict[str, None] = {}
    for statement in _walk_statements(module.body):
        for name in _statement_names(statement):
            names.setdefault(name, None)
    for node in ast.walk(module):
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            names.setdefault(node.target.id, None)
    return tuple(names)


@lru_cache(maxsize=4096)
def mentioned_names(source: str) -> tuple[str, ...]:
    """Identifiers in a cell's text, in order of first appearance (comments and strings excluded)."""
    names: dict[str, None] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME:
                names.setdefault(token.string, None)
    except (tokenize.TokenError, SyntaxError):
        pass  # an unfinished cell: what was read so far counts
    return tuple(names)


# -- where each variable goes -----------------------------------------------------


def _fit(lines: Iterable[str]) -> list[str]:
    return [line[:MAX_LINE_CHARS] for line in lines][:MAX_LINES_PER_CELL]


@dataclass(frozen=True)
class Placement:
    """The kernel's variables for one prompt: after which cell each goes, and the leading block."""

    after_cell: dict[int, list[str]]  # cell index -> summary lines (without comment marks)
    leading: list[str]  # in order of importance; the caller cuts it to its budget


def place_variables(
    sources: Sequence[str | None],
    execution_counts: Sequence[int | None],
    current: int,
    window_start: int,
    kernel: KernelState,
    hidden: frozenset[str] = frozenset(),
    ranking_end: int | None = None,
) -> Placement:
    """``sources[i]`` is cell i's code (``None`` for cells that are not code).
    ``hidden``: names never shown (bound by cells kept out of prompts).
    ``ranking_end``: the cells from ``window_start`` up to this one rank the
    leading block (all of them by default).

    A variable goes after the cells in the window (the cursor's cell aside)
    that bind it and were run, as it was right after that run.  The others
    lead the prompt: those bound above the window (as they were after that
    run, even where a cell in the window binds them again) and those no cell
    explains.  They are ranked by their first mention in the ranking cells,
    then by where they were bound, the latest first (those no cell
    binds last, in the kernel's order).  Neither a new cell at the end nor
    the cell being typed changes the block, so the prompt's start stays read."""
    latest = kernel.latest
    if latest is None:
        return Placement({}, [])
    after_cell: dict[int, list[str]] = {}
    explained = kernel.changed_by(execution_counts[current])
    as_run: dict[str, tuple[int, Variable]] = {}  # bound above the window: where, and as it was after that run
    order: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source is None or index == current:
            continue
        snapshot = kernel.after(execution_counts[index])
        if index < window_start:
            for name in bound_names(source):
                variable = snapshot.get(name) if snapshot else None
                if variable is not None:
                    as_run[name] = (index, variable)
            continue
        if ranking_end is None or index < ranking_end:
            for name in mentioned_names(source):
                order.setdefault(name, len(order))
        if snapshot is None:
            continue  # never run (as far as we know): it explains nothing
        names = bound_names(source)
        explained.update(names)
        if index < current:
            shown = (snapshot.get(name) for name in names if name not in hidden)
            lines = _fit(v.line() for v in shown if v is not None)
            if lines:
                after_cell[index] = lines
    leading = [
        as_run.get(v.name, (-1, v))
        for v in latest.variables
        if (v.name in as_run or v.name not in explained) and v.name not in hidden
    ]
    unmentioned = len(order)
    ranked = sorted(range(len(leading)), key=lambda i: (order.get(leading[i][1].name, unmentioned), -leading[i][0], i))
    return Placement(after_cell, [leading[i][1].line()[:MAX_LINE_CHARS] for i in ranked])
