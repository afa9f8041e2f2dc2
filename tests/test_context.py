from __future__ import annotations

from jupyter_codestral.context import ContextBudget, build_context, estimate_tokens, nearer, next_window
from jupyter_codestral.kernel_variables import KernelState, Snapshot, Variable, bound_names
from jupyter_codestral.request import Cell, CompletionRequest


def request(cells: list[tuple[str, str]], index: int, cursor: int | None = None, **kw: object) -> CompletionRequest:
    parsed = tuple(Cell(t, s) for t, s in cells)
    return CompletionRequest(parsed, index, len(parsed[index].source) if cursor is None else cursor, **kw)  # type: ignore[arg-type]


BIG = ContextBudget(prefix_tokens=10_000, suffix_tokens=10_000)


def test_earlier_cells_in_prefix_and_later_in_suffix_in_order() -> None:
    cells = [("code", "a = 1"), ("code", "b = 2"), ("code", "c = a + b"), ("code", "d = 4"), ("code", "e = 5")]
    ctx = build_context(request(cells, 2, cursor=4), BIG)
    assert ctx.prefix.index("a = 1") < ctx.prefix.index("b = 2") < ctx.prefix.index("c = ")
    assert ctx.prefix.endswith("# %%\nc = ")
    assert ctx.suffix.startswith("a + b")
    assert ctx.suffix.index("d = 4") < ctx.suffix.index("e = 5")
    assert "d = 4" not in ctx.prefix and "a = 1" not in ctx.suffix
    assert (ctx.cells_before, ctx.cells_after) == (2, 2)


def test_markdown_becomes_comments_in_the_cell_language_and_raw_is_dropped() -> None:
    cells = [("markdown", "# Title\nSome *text*"), ("raw", "RAW"), ("code", "x = 1")]
    ctx = build_context(request(cells, 2), BIG)
    assert "# %% [markdown]\n# # Title\n# Some *text*" in ctx.prefix
    assert "RAW" not in ctx.prefix
    js = build_context(request([("markdown", "Intro"), ("code", "let x")], 1, language="javascript"), BIG)
    assert "// Intro" in js.prefix and js.prefix.endswith("// %%\nlet x")


def test_magics_and_shell_lines_are_kept_verbatim() -> None:
    cells = [("code", "%matplotlib inline\n!pip install pandas\n%%time"), ("code", "x")]
    ctx = build_context(request(cells, 1), BIG)
    assert "%matplotlib inline\n!pip install pandas" in ctx.prefix


def test_budget_trims_the_farthest_cells_first_at_line_boundaries() -> None:
    far = "\n".join(f"far_{i} = {i}" for i in range(200))
    near = "near = 1"
    cells = [("code", far), ("code", near), ("code", "current = ")]
    ctx = build_context(request(cells, 2), ContextBudget(prefix_tokens=300, suffix_tokens=100, trim_step_tokens=1))
    assert "near = 1" in ctx.prefix
    assert "far_199 = 199" in ctx.prefix  # the end of the far cell is nearest the cursor
    assert "far_0 = 0" not in ctx.prefix
    first_line = ctx.prefix.split("\n", 1)[0]
    assert first_line.startswith("far_")  # cut at a line start, never mid-line
    assert estimate_tokens(ctx.prefix) <= 300 + 5


def test_suffix_budget_trims_far_later_cells_first() -> None:
    cells = [("code", "x = "), ("code", "y = 1"), ("code", "\n".join(f"late_{i}()" for i in range(300)))]
    ctx = build_context(request(cells, 0), ContextBudget(prefix_tokens=100, suffix_tokens=60))
    assert "y = 1" in ctx.suffix
    assert "late_0()" in ctx.suffix and "late_299()" not in ctx.suffix
    assert ctx.suffix.rstrip().split("\n")[-1].startswith("late_")


def test_the_current_line_is_never_cut() -> None:
    long_line = "value = " + " + ".join(f"term_{i}" for i in range(400))
    cells = [("code", "earlier = 1"), ("code", "above = 2\n" + long_line)]
    ctx = build_context(request(cells, 1), ContextBudget(prefix_tokens=50, suffix_tokens=50))
    assert ctx.cell_prefix.endswith(long_line)
    assert ctx.line_prefix == long_line


def test_mid_line_and_line_pieces() -> None:
    ctx = build_context(request([("code", "print(x)\nnext_line()")], 0, cursor=6), BIG)
    assert ctx.line_prefix == "print(" and ctx.line_suffix == "x)" and ctx.mid_line


def test_plain_file_has_no_cell_markers() -> None:
    req = CompletionRequest((Cell("code", "def f():\n    return 1\n"),), 0, 9, is_notebook=False)
    ctx = build_context(req, BIG)
    assert ctx.prefix == "def f():\n" and ctx.suffix == "    return 1\n" and "%%" not in ctx.prefix


def test_typing_in_the_current_cell_keeps_the_start_of_the_prompt_stable() -> None:
    """Trimming earlier cells in steps keeps a KV cache valid while the user types."""
    earlier = [("code", f"step_{i} = {i} * 2") for i in range(300)]
    budget = ContextBudget(prefix_tokens=1024, suffix_tokens=128, trim_step_tokens=256)
    typed = "result = compute(step_1, step_2"
    starts = set()
    for n in range(1, len(typed)):
        ctx = build_context(request([*earlier, ("code", typed[:n])], len(earlier)), budget)
        starts.add(ctx.before)
    assert len(starts) == 1


def test_the_windows_start_does_not_depend_on_the_cell_being_written() -> None:
    """However long the current cell grows, the earlier cells shown stay the same (a model keeps them read)."""
    earlier = [("code", f"step_{i} = {i} * 2") for i in range(300)]
    budget = ContextBudget(prefix_tokens=1536, suffix_tokens=384, trim_step_tokens=512)
    written = "\n".join(f"value_{k} = compute(step_{k}, scale=2.5)" for k in range(120))  # about 1,500 tokens
    befores = {
        build_context(request([*earlier, ("code", written[:n])], len(earlier)), budget).before
        for n in range(0, len(written), 97)
    }
    assert len(befores) == 1


def test_the_nearer_context_keeps_the_nearest_whole_cells_and_the_rest_as_it_was() -> None:
    earlier = [("code", f"step_{i} = compute({i}) * 2") for i in range(200)]
    ctx = build_context(request([*earlier, ("code", "x = ")], len(earlier)), ContextBudget())
    near = nearer(ctx, ContextBudget(near_tokens=256))
    assert near is not None and ctx.before.endswith(near.before) and near.before.startswith("# %%\n")
    assert 200 < estimate_tokens(near.before) <= 256 and near.cells_before == near.before.count("# %%")
    assert (near.namespace, near.header, near.cell_prefix, near.cell_suffix) == (
        ctx.namespace,
        ctx.header,
        ctx.cell_prefix,
        ctx.cell_suffix,
    )
    short = build_context(request([*earlier[:5], ("code", "x = ")], 5), ContextBudget())
    assert nearer(short, ContextBudget()) is None
    assert nearer(ctx, ContextBudget(near_tokens=0)) is None  # turned off: the whole prompt is read first
    assert near.after == ctx.after  # no later cells of its own: the stable layout reads only the end marker


def test_the_nearer_context_may_keep_the_nearest_later_cells_whole() -> None:
    earlier = [("code", f"step_{i} = compute({i}) * 2") for i in range(200)]
    later = [("code", f"after_{i} = step_{i} + 1") for i in range(50)]
    ctx = build_context(request([*earlier, ("code", "x = "), *later], len(earlier)), ContextBudget())
    near = nearer(ctx, ContextBudget(near_later_tokens=64))
    assert near is not None and ctx.after.startswith(near.after) and near.after.startswith("\n\n# %%\n")
    assert near.after.endswith(" + 1\n\n")  # whole cells
    assert 40 < estimate_tokens(near.after) <= 64 and near.cells_after == near.after.count("# %%")
    long_next = build_context(request([*earlier, ("code", "x = "), ("code", "\n".join(["y = 1"] * 200))],
                                      len(earlier)), ContextBudget())
    head = nearer(long_next, ContextBudget(near_later_tokens=64))
    assert head is not None and head.cells_after == 1 and estimate_tokens(head.after) <= 64  # the next cell's head


def kernel(*snapshots: tuple[int, list[tuple[str, str, str]]]) -> KernelState:
    return KernelState(tuple(Snapshot(n, tuple(Variable(*v) for v in vs)) for n, vs in snapshots))


CARS = ("cars", "DataFrame", "DataFrame, 406 rows, columns {'Name': object, 'Horsepower': float64}")
WHEAT = ("wheat", "DataFrame", "DataFrame, 52 rows, columns {'year': int64, 'wheat': float64}")
STOCKS = ("stocks", "DataFrame", "DataFrame, 560 rows, columns {'symbol': object}")
LOAD = ("load", "function", "(path)")
NP = ("np", "module", "numpy")


def test_the_variables_the_notebook_mentions_first_lead_the_kernel_summary() -> None:
    # Nothing says which cells ran: every variable leads the prompt, those the
    # other cells mention first (in their order), then the kernel's order.
    state = kernel((9, [WHEAT, STOCKS, LOAD, CARS, NP]))
    cells = (
        Cell("code", "import numpy as np\nstocks = load('s')"),
        Cell("code", "cars = load('c')\nwheat = load('w')"),
        Cell("code", "cars.plot()"),
        Cell("code", "cars["),
        Cell("code", "print(wheat)"),
    )
    ctx = build_context(CompletionRequest(cells, 3, 5), BIG, state)
    lines = ctx.namespace.split("\n")
    assert lines[0] == "# %% [variables in the running kernel]"
    assert lines[1:6] == [
        "# np = module numpy",
        f"# stocks: {STOCKS[2]}",
        "# def load(path)",
        f"# cars: {CARS[2]}",
        f"# wheat: {WHEAT[2]}",
    ]

    # Typing in the current cell, or moving to another cell, does not change it
    # (the prompt's start stays cacheable).
    typed = (*cells[:3], Cell("code", "np.mean(stocks"), cells[4])
    assert build_context(CompletionRequest(typed, 3, 14), BIG, state).namespace == ctx.namespace
    assert build_context(CompletionRequest(cells, 4, 3), BIG, state).namespace == ctx.namespace

    # Within a small budget only the first survive.
    small = build_context(CompletionRequest(cells, 3, 5), ContextBudget(namespace_tokens=20), state)
    assert small.namespace.split("\n")[1] == "# np = module numpy" and "cars" not in small.namespace


def test_each_run_cell_is_followed_by_the_variables_it_made_as_they_were_then() -> None:
    # Cell 0 ran as execution 1, cell 1 as execution 2; the kernel was asked after each.
    before = kernel((1, [NP, LOAD]), (2, [CARS, NP, LOAD]))
    cells = (
        Cell("code", "import numpy as np\ndef load(path): ...", 1),
        Cell("code", "cars = load('c')", 2),
        Cell("code", "cars["),
    )
    ctx = build_context(CompletionRequest(cells, 2, 5), BIG, before)
    assert ctx.namespace == ""  # every variable is explained by a cell that ran
    assert ctx.before == (
        "# %%\nimport numpy as np\ndef load(path): ...\n# %% [output]\n# np = module numpy\n"
        "# def load(path)\n\n# %%\ncars = load('c')\n# %% [output]\n"
        "# cars: DataFrame, 406 rows, columns {'Name': object, 'Horsepower': float64}\n\n"
    )

    # The user runs cell 2 (execution 3: cars changes, wheat appears) and moves to a new cell:
    # everything before the executed cell reads as before; only text after it is new.
    ran = kernel(
        (1, [NP, LOAD]),
        (2, [CARS, NP, LOAD]),
        (3, [WHEAT, ("cars", "DataFrame", "DataFrame, 10 rows, columns {'Name': object}"), NP, LOAD]),
    )
    cells_after = (cells[0], cells[1], Cell("code", "cars = cars.head(10)\nwheat = load('w')", 3), Cell("code", ""))
    moved = build_context(CompletionRequest(cells_after, 3, 0), BIG, ran)
    assert moved.namespace == "" and moved.before.startswith(ctx.before)
    assert moved.before[len(ctx.before) :] == (
        "# %%\ncars = cars.head(10)\nwheat = load('w')\n# %% [output]\n# cars: DataFrame, 10 rows, columns {'Name': object}\n"
        "# wheat: DataFrame, 52 rows, columns {'year': int64, 'wheat': float64}\n\n"
    )


def test_running_the_current_cell_in_place_does_not_move_its_variables_to_the_top() -> None:
    ran = kernel((1, [NP]), (2, [CARS, NP]))
    cells = (Cell("code", "import numpy as np", 1), Cell("code", "cars = load('c')", 2))
    ctx = build_context(CompletionRequest(cells, 1, 3), BIG, ran)
    assert ctx.namespace == "" and "cars" not in ctx.before


def test_what_cells_bind() -> None:
    source = (
        "import numpy as np, os.path\nfrom x import (a as b, c)\nx, (y, *z) = 1, (2, 3)\ndf['col'] = 1\n"
        "total += 1\nfor i in range(3):\n    k = i\ndef f(): inner = 1\nclass K: attr = 2\n"
        "with open('f') as fh: pass\nif (n := 10) > 5: pass\ndf2.dropna(inplace=True)\nplt.plot([1])\n"
        "%matplotlib inline\n!ls"
    )
    assert bound_names(source) == (
        "np",
        "os",
        "b",
        "c",
        "x",
        "y",
        "z",
        "df",
        "total",
        "i",
        "k",
        "f",
        "K",
        "fh",
        "df2",
        "n",
    )
    assert bound_names("%%time\nx = 1") == () and bound_names("x = (") == ()


def test_typing_in_a_cell_keeps_the_earlier_window_as_it_was() -> None:
    """The window above the cursor is worked out once while the user types in a cell: the same
    text each keystroke (so caches keyed on it, like redaction's, find it at once)."""
    earlier = [("markdown", "# Sales"), ("code", "import pandas as pd"), ("code", "df = pd.read_csv('s.csv')")]
    first = build_context(request([*earlier, ("code", "df.")], 3), BIG)
    second = build_context(request([*earlier, ("code", "df.he")], 3), BIG)
    assert second.before is first.before and second.cells_before == first.cells_before == 3
    assert second.prefix.endswith("# %%\ndf.he")
    moved = build_context(request([*earlier[:2], ("code", "df = pd.read_csv('t.csv')"), ("code", "df.")], 3), BIG)
    assert "t.csv" in moved.before and "s.csv" not in moved.before


def parts(count: int) -> tuple[tuple[Cell, ...], KernelState]:
    """A notebook of ``count`` run cells, each loading a part, and the kernel's snapshot after each run."""
    cells = tuple(Cell("code", f"part_{i} = load_table('sales', part={i})", i + 1) for i in range(count))
    snapshots = [
        Snapshot(n, tuple(Variable(f"part_{i}", "DataFrame", f"DataFrame, {n} rows") for i in reversed(range(n))))
        for n in range(1, count + 1)
    ]
    return cells, KernelState(tuple(snapshots))


WINDOW = ContextBudget(prefix_tokens=600, trim_step_tokens=200, namespace_tokens=400)


def test_a_cell_that_rebinds_a_variable_from_above_the_window_leaves_the_prompts_start_as_it_was() -> None:
    cells, state = parts(30)
    entered = build_context(CompletionRequest((*cells, Cell("code", "")), 30, 0), WINDOW, state)
    assert "part_0:" in entered.namespace and "part_0 =" not in entered.before  # cell 0 is above the window
    # The user rebinds part_0 in the new cell and runs it: the block leading the prompt still shows part_0
    # as cell 0 left it (its start stays read), and the run's notes follow the new cell.
    rebinding = Cell("code", "part_0 = part_0.head()", 31)
    ran = KernelState(
        (
            *state.snapshots,
            Snapshot(31, (Variable("part_0", "DataFrame", "DataFrame, 5 rows"), *state.snapshots[-1].variables[:-1])),
        )
    )
    after = build_context(CompletionRequest((*cells, rebinding, Cell("code", "")), 31, 0), WINDOW, ran)
    assert after.namespace == entered.namespace
    assert after.before.startswith(entered.before) and "# part_0: DataFrame, 5 rows" in after.before


def test_the_windows_next_step_is_read_ahead_a_few_cells_before_it_comes() -> None:
    cells, state = parts(40)
    # The user is at the end of cell 33; entering the next cell would keep the window's start.
    at_end = CompletionRequest(cells[:34], 33, len(cells[33].source))
    ran_33 = KernelState(state.snapshots[:34])
    now = build_context(at_end, WINDOW, ran_33)
    following = build_context(CompletionRequest((*cells[:34], Cell("code", "")), 34, 0), WINDOW, ran_33)
    assert following.namespace == now.namespace and following.before.startswith(now.before)
    # But the step is near: its start is read ahead.  Six cells are then pasted and run at once, and the
    # new cell after them finds the prompt's start as it was read ahead (only those cells are new text).
    ahead = next_window(at_end, WINDOW, ran_33)
    assert ahead is not None and len(ahead.namespace) > len(now.namespace)
    stepped = build_context(CompletionRequest((*cells, Cell("code", "")), 40, 0), WINDOW, state)
    assert stepped.namespace == ahead.namespace and stepped.before.startswith(ahead.before)
    assert not stepped.before.startswith(now.before)


def test_the_next_cells_context_is_read_ahead_only_when_entering_it_steps_the_window() -> None:
    cells, state = parts(30)
    short = Cell("code", "total = part_29.revenue.sum()")
    long = Cell("code", "\n".join(f"summary_{i} = part_{i}.describe()" for i in range(20)))
    for current, steps in ((short, False), (long, True)):
        at_end = CompletionRequest((*cells, current), 30, len(current.source))
        ahead = next_window(at_end, WINDOW, state)
        if not steps:
            assert ahead is None  # the next cell's prompt extends this one's: nothing to read ahead
            continue
        # Entering the next cell will drop a step of cells (their variables join the leading block): the
        # context read ahead is that cell's.
        entered = build_context(CompletionRequest((*cells, current, Cell("code", "")), 31, 0), WINDOW, state)
        now = build_context(at_end, WINDOW, state)
        assert ahead is not None and ahead.prefix == entered.prefix != now.prefix
        assert len(ahead.namespace) > len(now.namespace)
    # Without a kernel a step only drops text (kept tokens move into place): nothing to read ahead.
    assert next_window(CompletionRequest((*cells, long), 30, len(long.source)), WINDOW, None) is None
