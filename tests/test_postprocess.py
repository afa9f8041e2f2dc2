from __future__ import annotations

from dataclasses import replace

import pytest

from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.kernel_variables import KernelState, Snapshot, Variable
from jupyter_codestral.postprocess import (
    CompletionFilter,
    DEFAULT_RULES,
    ConfidenceGate,
    Cut,
    PostprocessOptions,
    Rule,
    clean,
    cleaned,
    options_for,
)
from jupyter_codestral.request import Cell, CompletionRequest


def opts(source: str, cursor: int | None = None, notebook: bool = True, single_line: bool = False) -> PostprocessOptions:
    cells = (Cell("code", "import pandas as pd"), Cell("code", source), Cell("code", "df.plot()"))
    req = CompletionRequest(cells, 1, len(source) if cursor is None else cursor, is_notebook=notebook)
    return options_for(build_context(req, ContextBudget()), single_line=single_line)


def stream(raw_chunks: list[str], options: PostprocessOptions) -> tuple[str, list[str], bool]:
    f = CompletionFilter(options)
    deltas = []
    for chunk in raw_chunks:
        deltas.append(f.feed(chunk))
        if f.finished:
            break
    deltas.append(f.finish())
    return f.text, deltas, f.finished


def test_single_line_when_code_is_right_of_the_cursor() -> None:
    o = opts("print()", cursor=6)
    assert o.single_line
    assert clean('"hello"\nprint(2)', o) == ('"hello"', True)


def test_repeated_closing_text_right_of_the_cursor_is_dropped() -> None:
    o = opts("print()", cursor=6)
    text, _, _ = stream(['"hel', 'lo")', "\nmore"], o)
    assert text == '"hello"'


def test_markdown_fences_are_removed() -> None:
    o = opts("def add(a, b):\n")
    assert clean("```python\n    return a + b\n```\nprint(1)", o)[0] == "    return a + b"
    text, _, _ = stream(["``", "`python\n", "    return a", " + b\n``", "`"], o)
    assert text == "    return a + b"


def test_an_echo_of_the_line_prefix_is_removed() -> None:
    o = opts("import num")
    assert clean("import numpy as np", o)[0] == "py as np"
    text, _, _ = stream(["imp", "ort num", "py as np"], o)
    assert text == "py as np"


def test_stop_at_the_end_of_the_cell() -> None:
    o = opts("def f():\n")
    text, finished = clean("    return 1\n\n# %%\nprint(f())", o)
    assert finished and text.rstrip() == "    return 1"


def test_stop_when_the_completion_repeats_the_suffix() -> None:
    o = opts("x = 1\n\nprint(x)", cursor=6)
    assert o.next_line == "print(x)"
    text, finished = clean("y = 2\nprint(x)\nmore", o)
    assert (text, finished) == ("y = 2", True)


@pytest.mark.parametrize(
    ("rules", "shown"),
    [
        (DEFAULT_RULES, "y = 2"),  # in the middle of a block: one statement
        (DEFAULT_RULES - {Rule.STATEMENT}, "y = 2\nz = 3"),  # up to the code below
    ],
)
def test_streamed_text_is_never_taken_back_and_equals_the_plain_result(rules: frozenset[Rule], shown: str) -> None:
    o = replace(opts("x = 1\n\nprint(x)", cursor=6), rules=rules)
    raw = "y = 2\nz = 3\n\nprint(x)\n"
    for size in (1, 2, 3, 5, 8):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        text, deltas, _ = stream(chunks, o)
        assert "".join(deltas) == text == shown  # (and never the line breaks before the code below)


def test_filter_stops_early_on_single_line() -> None:
    f = CompletionFilter(opts("print()", cursor=6))
    f.feed('"a"')
    assert not f.finished
    f.feed(")\nmore lines")
    assert f.finished and f.finish() == "" and f.text == '"a"'


def test_empty_line_single_line_mode_skips_leading_blank_lines() -> None:
    o = opts("x = 1\n", single_line=True)
    assert clean("\n\ny = 2\nz = 3", o) == ("y = 2", True)


# -- where a suggestion ends ----------------------------------------------------------------------------


def with_rules(options: PostprocessOptions, *rules: Rule) -> PostprocessOptions:
    return replace(options, rules=frozenset(rules))


def test_the_first_line_that_nearly_matches_the_code_below_ends_it() -> None:
    o = with_rules(opts("x = load()\n\nresult = model.predict(x_test)", cursor=11), Rule.NEXT_LINE, Rule.NEAR_NEXT_LINE)
    text, finished, cut = cleaned("scaled = scale(x)\nresult = model.predict(X_test)\n", o)
    assert (text, finished, cut) == ("scaled = scale(x)", True, Cut.NEXT_LINE)
    exact_only = with_rules(o, Rule.NEXT_LINE)
    assert cleaned("scaled = scale(x)\nresult = model.predict(X_test)\n", exact_only)[2] is None


def test_a_line_indented_less_than_the_block_ends_it_when_code_below_goes_on_there() -> None:
    source = "def f(x):\n    y = x\n    \nprint(f(1))"
    o = with_rules(opts(source, cursor=source.index("    \n") + 4), Rule.DEDENT)
    assert o.indent == 4 and o.below_indent == 0
    assert cleaned("z = y * 2\n    return z\nf(2)\n", o) == ("z = y * 2\n    return z", True, Cut.DEDENT)


def test_in_the_middle_of_a_block_one_statement_is_shown() -> None:
    source = "a = 1\n\nc = a + b"
    o = with_rules(opts(source, cursor=6), Rule.STATEMENT)
    assert o.inside_block
    assert cleaned("b = compute(\n    a,\n    2)\nd = 4\n", o) == ("b = compute(\n    a,\n    2)", True, Cut.STATEMENT)
    assert cleaned("for i in range(3):\n    a += i\nd = 4\n", o) == ("for i in range(3):\n    a += i", True,
                                                                     Cut.STATEMENT)
    # At the end of a cell (nothing below), lines go on.
    end = with_rules(opts("a = 1\n"), Rule.STATEMENT)
    assert not end.inside_block and cleaned("b = 2\nc = 3\n", end, final=True)[0].rstrip() == "b = 2\nc = 3"


def test_the_prompts_own_notes_are_never_shown() -> None:
    cells = (Cell("code", "orders = load()", 1), Cell("code", "top = orders.groupby("))
    state = KernelState((Snapshot(1, (Variable("orders", "DataFrame", "DataFrame, 365 rows"),)),))
    context = build_context(CompletionRequest(cells, 1, len(cells[1].source)), ContextBudget(), state)
    assert "# orders: DataFrame, 365 rows" in context.prompt_lines and "# %% [output]" in context.prompt_lines
    o = options_for(context)
    raw = '"region")["revenue"].sum()\ntop\n# orders: DataFrame, 365 rows\n# top: Series\n'
    assert cleaned(raw, o)[:2] == ('"region")["revenue"].sum()\ntop', True)
    marked = '"region")["revenue"].sum()\n# %% [output]\n# top: Series\n'
    assert cleaned(marked, o)[0] == '"region")["revenue"].sum()'
    text, _, _ = stream([raw[i : i + 3] for i in range(0, len(raw), 3)], o)
    assert "orders:" not in text  # never shown, even for a moment while streaming


def test_the_confidence_gate_holds_the_first_line_then_shows_or_hides_it() -> None:
    sure = ConfidenceGate(-1.0)
    assert sure.feed("df.he", -0.3, 2, False) == "" and sure.shown is None  # held until the line is whole
    assert sure.feed("ad()\nprint", -0.5, 4, False) == "df.head()\nprint" and sure.shown
    assert sure.feed("(df)", -9.0, 6, False) == "(df)"  # decided once
    unsure = ConfidenceGate(-1.0)
    assert unsure.feed("x = 1", -3.0, 2, True) == "" and unsure.shown is False
    unknown = ConfidenceGate(-1.0)
    assert unknown.feed("y", 0.0, 0, True) == "y"  # no figures: nothing to judge by


def test_the_indentation_the_cursor_is_after_is_not_written_twice() -> None:
    # An editor's auto-indent put the cursor under the open bracket; the model indents again.
    source = "model = KMeans(n_clusters=5,\n               \nmodel.fit(X)"
    o = opts(source, cursor=source.index("\nmodel.fit"))
    assert clean("    random_state=2)", o, final=True)[0] == "random_state=2)"
    # At the start of a line, the model's indentation is the line's.
    at_start = opts("for x in xs:\n", cursor=len("for x in xs:\n"))
    assert clean("    print(x)", at_start, final=True)[0] == "    print(x)"


def test_a_suggestion_cut_before_the_code_below_never_ends_with_a_line_break() -> None:
    source = "plt.text(0, 1, 'f',\n         \n\n    plt.show()"
    o = opts(source, cursor=source.index("\n\n    plt"))
    raw = "ha='center')\n\n    plt.show()\n"
    for size in (1, 3, 7):
        text, deltas, _ = stream([raw[i : i + size] for i in range(0, len(raw), size)], o)
        assert "".join(deltas) == text == "ha='center')"


def test_a_line_streams_as_soon_as_no_rule_can_cut_it() -> None:
    # The cursor at the end of a whole line in a new last cell, after a run: the suggestion starts on a new
    # line. Its first text is shown before that line is whole (it cannot be a note, a marker or the code
    # below), while a line that may still be one of the prompt's notes is held until it is judged.
    cells = (Cell("code", "orders = load()", 1), Cell("code", "top = orders.head()"))
    state = KernelState((Snapshot(1, (Variable("orders", "DataFrame", "DataFrame, 365 rows"),)),))
    context = build_context(CompletionRequest(cells, 1, len(cells[1].source)), ContextBudget(), state)
    f = CompletionFilter(options_for(context))
    assert f.feed("\nto") == "\nto"
    assert f.feed("p.plot(") == "p.plot("
    assert f.feed(")\n# ord") == ")"  # may be "# orders: DataFrame, ...": held
    assert f.feed("ers: DataFrame, 365 rows\n") == "" and f.finished and f.text == "\ntop.plot()"
    comment = CompletionFilter(options_for(context))
    assert comment.feed("\n# the top ones") == "\n# the top ones"  # no note starts so: shown at once
    # In the middle of a cell, a line that may still become the line below is held until it cannot.
    below = replace(opts("x = 1\n\nprint(total)", cursor=len("x = 1\n")), rules=DEFAULT_RULES - {Rule.STATEMENT})
    g = CompletionFilter(below)
    assert g.feed("total = x\nprint(to") == "total = x"
    assert g.feed("tal)\n") == "" and g.finished and g.text == "total = x"
    h = CompletionFilter(below)
    assert h.feed("total = x\nresult") == "total = x\nresult"  # far from "print(total)" already
