"""The edit engines' stages: the request, the chat prompt, what is kept of the answer, and the embedded model's chat."""

from __future__ import annotations

import ast
import asyncio
import json
from typing import Any

import pytest

from jupyter_codestral.assembly import assemble
from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.edit_answer import CodeAnswer, DocAnswer, answer_opening, documentation_text, documented
from jupyter_codestral.edit_prompt import document_target, edit_messages, render_chatml
from jupyter_codestral.edit_request import MAX_INSTRUCTION_CHARS, EditKind, EditRequest, parse_edit_request
from jupyter_codestral.errors import RequestError

FUNCTION = (
    "import numpy as np\n\n\n"
    "def scaled(values, factor=2):\n"
    "    total = values.sum()\n"
    "    return values * factor / total\n"
)
CELLS = [
    {"cell_type": "markdown", "source": "# Scaling\nEach value as a share of the total."},
    {"cell_type": "code", "source": "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2, 3]})"},
    {
        "cell_type": "code",
        "source": FUNCTION,
        "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "hi\n"},
            {
                "output_type": "error",
                "ename": "NameError",
                "evalue": "name 'np' is not defined",
                "traceback": ["\x1b[0;31mNameError\x1b[0m                 Traceback", "NameError: name 'np'"],
            },
        ],
    },
    {"cell_type": "code", "source": "print(scaled(frame['a']))"},
]


def edit(**fields: Any) -> EditRequest:
    body = {"cells": CELLS, "cell_index": 2, "kind": "fix", **fields}
    return parse_edit_request(json.dumps(body).encode())


def refused(**fields: Any) -> str:
    with pytest.raises(RequestError) as caught:
        edit(**fields)
    assert 400 <= caught.value.status < 500
    return caught.value.message


# -- the request ---------------------------------------------------------------------------------


def test_an_edit_without_a_selection_is_of_the_whole_cell_and_takes_the_cells_last_error() -> None:
    request = edit()
    assert (request.start, request.end) == (0, len(FUNCTION)) and request.selected == FUNCTION
    assert request.kind == EditKind.FIX
    assert request.error is not None and request.error.ename == "NameError"
    assert "\x1b" not in request.error.traceback and request.error.traceback.startswith("NameError ")
    assert request.at_range().cursor == 0 and request.at_range().cells == request.cells
    assert request.document_id != request.at_range().document_id  # edits never supersede completions


def test_bad_edits_get_a_4xx_naming_the_field() -> None:
    assert "'kind'" in refused(kind="translate")
    assert "'selection'" in refused(selection={"start": 5, "end": len(FUNCTION) + 1})
    assert "'selection'" in refused(selection={"start": 9, "end": 3})
    assert "selection.start" in refused(selection={"start": "0", "end": 3})
    assert "'instruction'" in refused(kind="rewrite")
    assert "'instruction'" in refused(kind="rewrite", instruction="   ")
    assert "'instruction'" in refused(kind="rewrite", instruction="x" * (MAX_INSTRUCTION_CHARS + 1))
    assert "'cell_index'" in refused(cell_index=4)
    assert "markdown" in refused(cell_index=0)
    assert "outputs" in refused(cells=[{"cell_type": "code", "source": "x", "outputs": "boom"}], cell_index=0)
    with pytest.raises(RequestError) as caught:
        parse_edit_request(b"{not json")
    assert caught.value.status == 400


# -- the prompt ----------------------------------------------------------------------------------


def messages_for(request: EditRequest) -> list[Any]:
    return edit_messages(request, build_context(request.at_range(), ContextBudget()))


def test_the_prompt_holds_the_notebook_around_the_cell_the_marked_range_and_the_task_last() -> None:
    start = FUNCTION.index("def")
    request = edit(
        kind="rewrite", instruction="avoid dividing by zero", selection={"start": start, "end": len(FUNCTION)}
    )
    system, user = messages_for(request)
    assert system.role == "system" and "only" in system.content
    text = user.content
    assert text.index("frame = pd.DataFrame") < text.index("print(scaled") < text.index("<<<START>>>def scaled")
    assert "import numpy as np\n\n\n<<<START>>>def scaled" in text and text.endswith("avoid dividing by zero")
    # What changes least comes first, so a backend that keeps its prompt's start reads little again: another
    # edit of the cell shares all up to the cell, an edit of the next cell the earlier cells.
    again = messages_for(edit(kind="rewrite", instruction="use numpy", selection={"start": start, "end": start}))
    assert again[1].content.startswith(text[: text.index("The cell:")])
    later = messages_for(edit(cell_index=3, kind="rewrite", instruction="print it twice"))
    assert later[1].content.startswith(text[: text.index("\n```\n\nThe cells after it")])


def test_a_fix_prompt_gives_the_error_and_a_document_prompt_names_the_parameters() -> None:
    _, fix = messages_for(edit())
    assert "NameError: name 'np'" in fix.content and "Fix the part" in fix.content
    _, document = messages_for(edit(kind="document"))
    assert "`scaled`" in document.content and "(values, factor)" in document.content
    assert document_target("class A:\n    x = 1\n").kind == "class"
    assert document_target("x = 1\ny = x + 1\n").kind == "statements"
    assert document_target("def f(self, *a, k=1, **kw): pass").parameters == ("*a", "k", "**kw")


def test_the_embedded_models_chat_template_is_chatml_ready_for_the_answer() -> None:
    system, user = messages_for(edit())
    prompt = render_chatml([system, user])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>") == 3
    # The assistant's turn opens with the fence the system text asks for: the model starts with the code.
    assert render_chatml([system, user], answer_opening(edit())).endswith("<|im_start|>assistant\n```python\n")
    # A docstring's answer opens with the code up to it and the opening quote: the model writes it at once.
    document = edit(kind="document")
    assert answer_opening(document) == "```python\n" + FUNCTION.split("    total")[0] + '    """'
    statements = edit(kind="document", cells=[{"cell_type": "code", "source": "x = 1\n"}], cell_index=0)
    assert answer_opening(statements) == "```text\n"


# -- the answer ----------------------------------------------------------------------------------


def streamed(answer: CodeAnswer, text: str, step: int = 3) -> str:
    out = "".join(answer.feed(text[i : i + step]) for i in range(0, len(text), step)) + answer.finish()
    assert out == answer.replacement
    return out


def test_a_fenced_answer_keeps_only_its_code_at_the_ranges_indentation() -> None:
    source = "for x in xs:\n    total = 0\n    for y in x:\n        total += y\nprint(total)\n"
    start, end = source.index("    total = 0"), source.index("print")
    answer = CodeAnswer(source, start, end)
    text = "Here is the rewritten code:\n```python\ntotal = sum(x)\n\n```\nIt uses sum.\n"
    assert streamed(answer, text) == "    total = sum(x)\n"
    assert answer.finished


def test_an_answer_without_fences_is_taken_as_code_and_a_range_without_a_line_end_gets_none() -> None:
    source = "y = [v * 2 for v in values]"
    start = source.index("[")
    assert (
        streamed(CodeAnswer(source, start, len(source)), "  list(map(double, values))\n\n")
        == "list(map(double, values))"
    )
    assert streamed(CodeAnswer(source, 0, len(source)), "```\n```") == ""


def test_the_streamed_pieces_add_up_to_the_replacement_whatever_the_pieces() -> None:
    source = "def f(a):\n    if a > 1:\n        return a\n    return 0\n"
    text = "```python\ndef f(a):\n    if a >= 1:\n        return a\n\n    return 0\n```"
    whole = streamed(CodeAnswer(source, 0, len(source)), text, step=len(text))
    for step in (1, 2, 5, 17):
        assert streamed(CodeAnswer(source, 0, len(source)), text, step) == whole
    assert whole == "def f(a):\n    if a >= 1:\n        return a\n\n    return 0\n"


def test_a_line_of_code_is_shown_as_it_is_written_once_nothing_can_change_it() -> None:
    source = "def f(a):\n    return a > 1\n"
    answer = CodeAnswer(source, 0, len(source))
    pieces = ["```python\n", "def", " f(a):\n", "\n", "    return", " a >", " 1", "\n```"]
    # The first word of code goes out at once; a "<" or ">" waits for the next piece (a copied range marker
    # may start so), and so does a blank line until code follows it.
    assert [answer.feed(piece) for piece in pieces] == ["", "def", " f(a):", "", "\n\n    return", " a ", "> 1", ""]
    assert answer.finish() == "\n" and answer.replacement == "def f(a):\n\n    return a > 1\n"
    # Without a fence, the first line may be prose: the answer's first line waits for its end.
    plain = CodeAnswer(source, 0, len(source))
    assert plain.feed("Here is") == "" and plain.feed(" the code:\ndef f") == ""
    assert plain.feed("(a):\n    ret") == "def f(a):\n    ret"
    # A selection after the cell's own text: the answer may repeat that text before a copied marker.
    cell = "x = 1\ny = x +\n"
    repeat = CodeAnswer(cell, cell.index("y"), len(cell))
    assert repeat.feed("```python\nx = ") == "" and repeat.feed("1\n<<<START>>>y = x + 1\n```") == "y = x + 1"


def test_documentation_streams_in_place_a_line_at_a_time_and_adds_up_to_the_placed_whole() -> None:
    code = "def scaled(values, factor=2):\n    return values * factor\n"
    answer = DocAnswer(code)
    pieces = ["```text\n", "Each", " value", " scaled.\n", "\n", "Args", ":\n", "  values: the values.\n", "```"]
    out = [answer.feed(piece) for piece in pieces]
    # The code before the docstring goes out with the documentation's first word, the code after it last.
    assert out[:3] == ["", 'def scaled(values, factor=2):\n    """Each', " value"]
    assert "".join(out) + answer.finish() == answer.replacement
    assert answer.replacement == (
        'def scaled(values, factor=2):\n    """Each value scaled.\n\n    Args:\n      values: the values.\n    """\n'
        "    return values * factor\n"
    )
    texts = [
        "```text\nEach value scaled.\n\nArgs:\n    values: the values.\n```",
        '"""Each value scaled.\n\n    Args:\n        values: the values.\n    """',
        '```text\ndef scaled(values, factor=2):\n    """Each value scaled."""\n    return 0\n```',
        "Here is the docstring:\n```\nEach value scaled.\n```",
        "# Each value's share",
    ]
    for text in texts:
        whole = documented(code, text)
        for step in (1, 2, 3, 7):
            streaming = DocAnswer(code)
            pieces_out = "".join(streaming.feed(text[i : i + step]) for i in range(0, len(text), step))
            assert pieces_out + streaming.finish() == streaming.replacement == whole, (text, step)
    # Written as it stands in code, a docstring keeps only its own indentation (as inspect.cleandoc does).
    assert documented(code, texts[1]) == documented(code, texts[0])
    # The answer as the embedded model's opening starts it: the docstring streams and its closing quote ends it.
    opened = DocAnswer(code)
    first = opened.feed('```python\ndef scaled(values, factor=2):\n    """Each')
    assert first == 'def scaled(values, factor=2):\n    """Each'
    assert opened.feed(' value scaled."""\n    return values * factor\n') == " value scaled."
    assert opened.finished and opened.finish() == '"""\n    return values * factor\n'
    assert opened.replacement == documented(code, '"""Each value scaled."""')
    # The code before the docstring may hold blank lines (imports above the function): still streamed.
    document = edit(kind="document")
    imported = DocAnswer(document.selected)
    assert (
        imported.feed(answer_opening(document) + "Each value") == FUNCTION.split("    total")[0] + '    """Each value'
    )


def test_documentation_is_placed_by_us_and_the_code_stays_byte_identical() -> None:
    code = "@cache\ndef scaled(values,\n           factor=2):\n    # the share of each\n    return values * factor\n"
    answers = [
        "```text\nEach value times factor.\n\nArgs:\n    values: the values.\n    factor: the multiplier.\n```",
        '"""Each value times factor."""',
        "# Each value times factor.",
        'def scaled(values, factor=2):\n    """Each value times factor."""\n    return 0',
    ]
    for answer in answers:
        out = documented(code, answer)
        tree = ast.parse(out)
        function = tree.body[0]
        assert isinstance(function, ast.FunctionDef)
        docstring = ast.get_docstring(function)
        assert docstring is not None and docstring.startswith("Each value times factor"), (answer, out)
        # Without the docstring's lines the code is exactly what it was.
        lines = out.split("\n")
        body = function.body[0]
        del lines[body.lineno - 1 : body.end_lineno]
        assert "\n".join(lines) == code
    # An old docstring is replaced, not doubled.
    again = documented(documented(code, answers[1]), '"""Better words."""')
    assert again.count('"""') == 2 and "Better words." in again
    # Plain statements get a comment block above them, at their indentation.
    assert documented("    x = 1\n    y = x\n", "Sets x and y.") == "    # Sets x and y.\n    x = 1\n    y = x\n"
    assert documented("x = 1\n", "```text\n```") == "x = 1\n"
    assert documentation_text('Docstring with """quotes"""') == "Docstring with '''quotes'''"


def test_range_markers_the_model_copies_are_dropped_with_what_it_repeated_around_them() -> None:
    source = "x = 1\ny = x +\n"
    start = source.index("y")
    answer = CodeAnswer(source, start, len(source))
    assert streamed(answer, "```python\nx = 1\n<<<START>>>y = x + 1\n<<<END>>>\n```") == "y = x + 1\n"
    answer = CodeAnswer(source, start, len(source))
    assert streamed(answer, "<<<START>>>y = x + 1<<<END>>>") == "y = x + 1\n"
    # As the 0.5B copies them in the edits benchmark: the arrows turned, the end on a line of its own.
    whole = CodeAnswer(source, 0, len(source))
    assert streamed(whole, ">>>START>>>x = 1\ny = x + 1\n>>>END>>>\n") == "x = 1\ny = x + 1\n"


# -- POST codestral/edit, over real HTTP -----------------------------------------------------------

FIXED = "def mean(values):\n    return sum(values) / len(values)\n"
FIX_CHUNKS = [
    "Here is the fix:\n```py",
    "thon\ndef mean(values):\n",
    "    return sum(values) / len(values)\n",
    "```\n",
    "Done.",
]
BROKEN = [
    {"cell_type": "code", "source": "import statistics"},
    {
        "cell_type": "code",
        "source": "def mean(values):\n    return sum(values) / len(value)\n",
        "outputs": [{"output_type": "error", "ename": "NameError", "evalue": "name 'value' is not defined",
                     "traceback": ["\x1b[31mNameError\x1b[0m: name 'value' is not defined"]}],
    },
]  # fmt: skip


@pytest.fixture
def post_edit(jp_fetch: Any) -> Any:
    """POST to codestral/edit; (status, parsed body or NDJSON lines)."""

    async def _post(body: Any) -> tuple[int, Any]:
        response = await jp_fetch(
            # Generous: the real model writes a whole cell, slowly on a busy machine (a shared CI runner).
            "codestral",
            "edit",
            method="POST",
            body=json.dumps(body),
            raise_error=False,
            request_timeout=300,
        )
        text = response.body.decode()
        if response.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            return response.code, [json.loads(line) for line in text.splitlines() if line.strip()]
        return response.code, json.loads(text)

    return _post


def fix_body(**fields: Any) -> dict[str, Any]:
    return {"cells": BROKEN, "cell_index": 1, "kind": "fix", "path": "stats.ipynb", "stream": True, **fields}


@pytest.mark.parametrize(
    ("codestral_config", "path"),
    [
        ({"backend": "mistral"}, "/v1/chat/completions"),
        ({"backend": "openai"}, "/v1/chat/completions"),
        ({"backend": "llamacpp"}, "/v1/chat/completions"),
        ({"backend": "ollama"}, "/api/chat"),
    ],
    indirect=["codestral_config"],
)
async def test_every_backend_answers_a_fix_through_its_chat_api_streamed_as_the_replacement(
    post_edit: Any, fake_backend: Any, codestral_config: dict[str, Any], path: str
) -> None:
    fake_backend.reset(chunks=FIX_CHUNKS)
    status, events = await post_edit(fix_body())
    assert status == 200, events
    *deltas, done = events
    assert done["done"] and done["route"] == "fix" and done["backend"] == codestral_config["backend"]
    assert "".join(d["delta"] for d in deltas) == done["replacement"] == FIXED
    assert done["range"] == {"start": 0, "end": len(BROKEN[1]["source"])}
    sent = fake_backend.last
    assert sent.path == path
    system, user = sent.body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "import statistics" in user["content"] and "NameError: name 'value'" in user["content"]
    assert "\x1b" not in user["content"]
    if codestral_config["backend"] == "mistral":
        assert sent.headers["Authorization"].startswith("Bearer ")
    # What the whole reply says, without streaming: the done event alone.
    status, whole = await post_edit(fix_body(stream=False))
    assert status == 200 and whole["replacement"] == FIXED


async def test_a_document_edit_leaves_the_code_byte_identical(post_edit: Any, fake_backend: Any) -> None:
    fake_backend.reset(chunks=["```text\n", "The mean of values.\n\n", "values: the numbers.\n", "```"])
    source = BROKEN[1]["source"]
    status, events = await post_edit(fix_body(kind="document"))
    assert status == 200, events
    done = events[-1]
    assert done["route"] == "document"
    assert "".join(e.get("delta", "") for e in events[:-1]) == done["replacement"]
    replaced = done["replacement"]
    assert ast.get_docstring(ast.parse(replaced).body[0]) == "The mean of values.\n\nvalues: the numbers."  # type: ignore[arg-type]
    lines = replaced.split("\n")
    assert "\n".join([lines[0], *lines[5:]]) == source


async def test_bad_edits_get_a_4xx_over_http_and_refused_cells_a_403(post_edit: Any, fake_backend: Any) -> None:
    status, reply = await post_edit(fix_body(kind="translate"))
    assert status == 400 and "'kind'" in reply["error"]["message"]
    status, reply = await post_edit(fix_body(kind="rewrite"))
    assert status == 400 and "'instruction'" in reply["error"]["message"]
    status, reply = await post_edit(fix_body(selection={"start": 0, "end": 10_000}))
    assert status == 400 and "'selection'" in reply["error"]["message"]
    tagged = [BROKEN[0], {**BROKEN[1], "metadata": {"tags": ["no-completion"]}}]
    status, reply = await post_edit(fix_body(cells=tagged))
    assert status == 403 and reply["error"]["kind"] == "policy" and "Edits are off" in reply["error"]["message"]
    status, reply = await post_edit(fix_body(metadata={"codestral": {"enabled": False}}))
    assert status == 403
    assert fake_backend.requests == []  # nothing refused reached the backend


@pytest.mark.parametrize("codestral_config", [{"disabled_paths": ["exams/**"]}], indirect=True)
async def test_the_course_policy_refuses_edits_where_it_refuses_completions(post_edit: Any, fake_backend: Any) -> None:
    status, reply = await post_edit(fix_body(path="exams/final.ipynb"))
    assert status == 403 and "course policy" in reply["error"]["message"]
    assert fake_backend.requests == []


PER_KIND = {"disabled_kinds": {"exercises/**": ["fix"], "exams/**": ["completion", "edits"], "quiz/**": ["completion"]}}


@pytest.mark.parametrize("codestral_config", [PER_KIND], indirect=True)
async def test_a_teacher_can_forbid_fix_and_allow_completions_or_the_reverse(
    post_edit: Any, complete: Any, fake_backend: Any, jp_fetch: Any
) -> None:
    from conftest import notebook_request

    # Exercises: completions and the other edits on, fix off.
    status, lines = await complete(notebook_request(path="exercises/week1.ipynb", stream=True))
    assert status == 200 and lines[-1]["done"] and "off" not in lines[-1]
    status, reply = await post_edit(fix_body(path="exercises/week1.ipynb"))
    assert status == 403 and reply["error"]["kind"] == "policy"
    assert reply["error"]["message"] == (
        "Fix edits are off in exercises/week1.ipynb (course policy: not allowed there, exercises/**)."
    )
    status, _ = await post_edit(fix_body(path="exercises/week1.ipynb", kind="document"))
    assert status == 200
    # A quiz: the reverse, completions off and fix on.
    status, reply = await complete(notebook_request(path="quiz/q1.ipynb"))
    assert status == 403 and "Completions are off in quiz/q1.ipynb" in reply["error"]["message"]
    status, _ = await post_edit(fix_body(path="quiz/q1.ipynb"))
    assert status == 200
    # An exam: everything off ("edits" names the three edit kinds).
    for kind in ("fix", "rewrite", "document"):
        status, reply = await post_edit(fix_body(path="exams/final.ipynb", kind=kind, instruction="shorter"))
        assert status == 403 and "course policy" in reply["error"]["message"], (kind, reply)
    # The status tells the frontend which commands to grey out.
    for path, off in [
        ("exercises/week1.ipynb", ["fix"]),
        ("quiz/q1.ipynb", ["completion"]),
        ("exams/final.ipynb", ["completion", "rewrite", "fix", "document"]),
        ("home.ipynb", []),
    ]:
        policy = json.loads((await jp_fetch("codestral", "status", params={"path": path})).body)["policy"]
        assert policy["off_kinds"] == off, path
        assert policy["allowed"] is ("completion" not in off), path


def test_disabled_kinds_come_from_the_environment_and_an_unknown_kind_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jupyter_codestral.options import CodestralOptions

    monkeypatch.setenv("JUPYTER_CODESTRAL_DISABLED_KINDS", '{"labs/**": ["fix", "edit"]}')
    options = CodestralOptions()
    assert options.disabled_kinds == {"labs/**": ["fix", "edit"]}
    problem = options.problems()["disabled_kinds"]
    assert "(edit)" in problem and "JUPYTER_CODESTRAL_DISABLED_KINDS" in problem
    monkeypatch.setenv("JUPYTER_CODESTRAL_DISABLED_KINDS", '["labs/**"]')
    options = CodestralOptions()
    assert options.disabled_kinds == {} and "a JSON object of glob patterns" in options.problems()["disabled_kinds"]


@pytest.fixture
def routed_config(fake_backend: Any) -> dict[str, Any]:
    return {
        "backends": {
            "down": {"backend": "openai", "url": "http://127.0.0.1:9", "model": "m"},
            "editor": {"backend": "openai", "url": fake_backend.url, "model": "qwen-editor"},
        },
        "routes": {"line": ["editor"], "fix": ["down", "editor"], "rewrite": []},
    }


async def test_an_edit_route_falls_back_to_its_next_backend_and_a_kind_without_one_says_so(
    jp_serverapp: Any, post_edit: Any, fake_backend: Any, routed_config: Any
) -> None:
    # The routed service, built from the running extension's settings and put in the server's place.
    service = jp_serverapp.web_app.settings["codestral_service"]
    ext = next(e for e in jp_serverapp.extension_manager.extension_apps["jupyter_codestral"])
    ext.backends, ext.routes = routed_config["backends"], routed_config["routes"]
    rebuilt = assemble(ext).service
    jp_serverapp.web_app.settings["codestral_service"] = rebuilt
    try:
        fake_backend.reset(chunks=FIX_CHUNKS)
        status, events = await post_edit(fix_body())
        assert status == 200, events
        done = events[-1]
        assert done["backend"] == "editor" and done["model"] == "qwen-editor" and "fallback_reason" in done
        assert done["replacement"] == FIXED
        status, reply = await post_edit(fix_body(kind="rewrite", instruction="use statistics.mean"))
        assert status == 503 and "rewrite" in reply["error"]["message"], reply
    finally:
        jp_serverapp.web_app.settings["codestral_service"] = service
        await rebuilt.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("codestral_config", [{"backend": "embedded"}], indirect=True)
async def test_the_embedded_model_answers_edits_from_the_browsers_endpoint(post_edit: Any, jp_fetch: Any) -> None:
    for _ in range(1200):
        if json.loads((await jp_fetch("codestral", "status")).body)["ready"]:
            break
        await asyncio.sleep(0.1)
    status, events = await post_edit(fix_body())
    assert status == 200, events
    done = events[-1]
    assert done["backend"] == "embedded" and done["route"] == "fix"
    namespace: dict[str, Any] = {}
    exec(compile(done["replacement"], "<fixed>", "exec"), namespace)
    assert namespace["mean"]([1, 2, 3]) == 2, done["replacement"]
    status, events = await post_edit(fix_body(kind="document"))
    assert status == 200, events
    replaced = events[-1]["replacement"]
    function = ast.parse(replaced).body[0]
    assert isinstance(function, ast.FunctionDef) and ast.get_docstring(function), replaced


@pytest.mark.slow
@pytest.mark.parametrize("codestral_config", [{"backend": "embedded"}], indirect=True)
async def test_fix_read_ahead_when_the_cell_raised_leaves_the_fix_nothing_to_read(
    post_edit: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    from conftest import the_app
    from test_local_model import wait_ready, worker_timings

    await wait_ready(jp_fetch)
    backend = the_app(jp_serverapp).service.completer.backend
    seen = backend.timings_seen
    # The frontend's, once the cell raised: the prompt read, nothing written, the range unchanged.
    status, reply = await post_edit(fix_body(prefetch=True, stream=False))
    assert status == 200 and reply["replacement"] == BROKEN[1]["source"], reply
    ahead = await worker_timings(backend, seen)
    assert ahead["read_tokens"] > 100, ahead
    seen = backend.timings_seen
    status, events = await post_edit(fix_body())  # the user clicks Fix
    assert status == 200 and events[-1]["replacement"], events
    fixed = await worker_timings(backend, seen)
    assert fixed["read_tokens"] <= 2 and fixed["cached_tokens"] >= ahead["prompt_tokens"] - 2, (ahead, fixed)


async def test_an_edit_prefetch_where_no_backend_keeps_a_cache_costs_no_call(post_edit: Any, fake_backend: Any) -> None:
    status, reply = await post_edit(fix_body(prefetch=True, stream=False))  # the Mistral fake: no prompt cache
    assert status == 200 and reply["replacement"] == BROKEN[1]["source"] and reply["timings"]["prefetch_skipped"]
    assert fake_backend.requests == []
