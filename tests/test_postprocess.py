from __future__ import annotations

from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.postprocess import CompletionFilter, PostprocessOptions, clean, options_for
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


def test_streamed_text_is_never_taken_back_and_equals_the_plain_result() -> None:
    o = opts("x = 1\n\nprint(x)", cursor=6)
    raw = "y = 2\nz = 3\nprint(x)\n"
    for size in (1, 2, 3, 5, 8):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        text, deltas, _ = stream(chunks, o)
        assert "".join(deltas) == text == "y = 2\nz = 3"


def test_filter_stops_early_on_single_line() -> None:
    f = CompletionFilter(opts("print()", cursor=6))
    f.feed('"a"')
    assert not f.finished
    f.feed(")\nmore lines")
    assert f.finished and f.finish() == "" and f.text == '"a"'


def test_empty_line_single_line_mode_skips_leading_blank_lines() -> None:
    o = opts("x = 1\n", single_line=True)
    assert clean("\n\ny = 2\nz = 3", o) == ("y = 2", True)
