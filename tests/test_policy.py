"""Where completions are offered (the notebook's own settings, the course policy) and redaction of secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import NOTEBOOK, notebook_request
from fake_backends import FakeFimServer
from secret_corpus import ORDINARY, SECRETS

from jupyter_codestral.policy import PathPolicy, normalize_path
from jupyter_codestral.redaction import PLACEHOLDER, secret_spans


def tagged(cell: dict[str, Any], *tags: str) -> dict[str, Any]:
    return {**cell, "metadata": {"tags": list(tags)}}


def sent_text(fake: FakeFimServer) -> str:
    body = fake.last.body
    return body["prompt"] + "\n" + (body.get("suffix") or "")


# -- the notebook's own settings --------------------------------------------------


async def test_a_notebook_turned_off_in_its_metadata_costs_no_backend_call(
    complete: Any, fake_backend: FakeFimServer
) -> None:
    status, body = await complete(notebook_request(metadata={"codestral": {"enabled": False}}))
    assert status == 200 and body["completion"] == ""
    assert "off in this notebook" in body["off"]
    assert fake_backend.request_count == 0
    # Streamed, the reason is in the done line.
    status, lines = await complete(notebook_request(metadata={"codestral": {"enabled": False}}, stream=True))
    assert status == 200 and lines[-1]["done"] and "metadata" in lines[-1]["off"]
    assert fake_backend.request_count == 0


async def test_a_no_completion_cell_is_skipped_and_the_next_cell_completes(
    complete: Any, fake_backend: FakeFimServer
) -> None:
    cells = [*NOTEBOOK]
    cells[2] = tagged(cells[2], "exercise", "no-completion")
    status, body = await complete(notebook_request(cells=cells))
    assert status == 200 and body["completion"] == "" and "no-completion" in body["off"]
    assert fake_backend.request_count == 0
    status, body = await complete(notebook_request(cells=cells, cell_index=4, cursor=len(cells[4]["source"])))
    assert status == 200 and body["completion"] and "off" not in body
    assert fake_backend.request_count == 1


async def test_a_no_context_cell_reaches_no_prompt(complete: Any, fake_backend: FakeFimServer) -> None:
    hidden_before = tagged({"cell_type": "code", "source": "solution = 'ANSWER-BEFORE'"}, "no-context")
    hidden_after = tagged({"cell_type": "code", "source": "check('ANSWER-AFTER')"}, "no-context")
    cells = [NOTEBOOK[1], hidden_before, NOTEBOOK[2], hidden_after, NOTEBOOK[4]]
    status, _ = await complete(notebook_request(cells=cells))
    assert status == 200
    text = sent_text(fake_backend)
    assert "ANSWER-BEFORE" not in text and "ANSWER-AFTER" not in text
    assert "import pandas" in text and "df.plot()" in text  # the others are sent as usual
    # The cursor in such a cell: no completion there (its text would be in the prompt).
    status, body = await complete(notebook_request(cells=cells, cell_index=1, cursor=3))
    assert status == 200 and "no-context" in body["off"] and fake_backend.request_count == 1


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"codestral": {"enabled": "no"}}},
        {"metadata": {"codestral": False}},
        {"metadata": []},
        {"cells": [{"cell_type": "code", "source": "x", "metadata": {"tags": "no-completion"}}], "cell_index": 0,
         "cursor": 0},
        {"cells": [{"cell_type": "code", "source": "x", "metadata": []}], "cell_index": 0, "cursor": 0},
    ],
)
async def test_malformed_metadata_gets_a_400_that_names_it(complete: Any, body: dict[str, Any]) -> None:
    status, reply = await complete(notebook_request(**body))
    assert status == 400 and "metadata" in reply["error"]["message"]


# -- the course policy ------------------------------------------------------------------------------

EXAM = {"disabled_paths": ["exams/**", "**/*-exam.ipynb"]}


@pytest.mark.parametrize("codestral_config", [EXAM])
@pytest.mark.parametrize(
    "path", ["exams/final.ipynb", "exams/2026/q1.ipynb", "week3/midterm-exam.ipynb", "./exams/../exams/final.ipynb",
             "/exams/final.ipynb"]
)
async def test_a_disabled_path_is_refused_whatever_the_request_claims(
    complete: Any, fake_backend: FakeFimServer, path: str, codestral_config: Any
) -> None:
    status, body = await complete(notebook_request(path=path, metadata={"codestral": {"enabled": True}}))
    assert status == 403 and body["error"]["kind"] == "policy"
    assert "course policy" in body["error"]["message"]
    status, lines = await complete(notebook_request(path=path, stream=True))
    assert status == 403 and fake_backend.request_count == 0


@pytest.mark.parametrize("codestral_config", [EXAM])
async def test_other_paths_complete_and_the_status_says_which_are_off(
    complete: Any, fake_backend: FakeFimServer, jp_fetch: Any, codestral_config: Any
) -> None:
    status, body = await complete(notebook_request(path="homework/week3.ipynb"))
    assert status == 200 and body["completion"]
    off = json.loads((await jp_fetch("codestral", "status", params={"path": "exams/final.ipynb"})).body)
    assert off["policy"] == {"path": "exams/final.ipynb", "allowed": False,
                             "reason": "Completions are off in exams/final.ipynb (course policy).",
                             "off_kinds": ["completion", "rewrite", "fix", "document"]}
    on = json.loads((await jp_fetch("codestral", "status", params={"path": "homework/week3.ipynb"})).body)
    assert on["policy"]["allowed"] is True and on["policy"]["reason"] is None


@pytest.mark.parametrize("codestral_config", [{"allowed_paths": ["lectures/**"]}])
async def test_allowed_paths_refuse_everything_else(
    complete: Any, fake_backend: FakeFimServer, codestral_config: Any
) -> None:
    status, _ = await complete(notebook_request(path="lectures/01-intro.ipynb"))
    assert status == 200
    for path in ("exercises/01.ipynb", "lectures-copy/01.ipynb", None):
        status, body = await complete(notebook_request(path=path))
        assert status == 403 and "course policy" in body["error"]["message"], path
    assert fake_backend.request_count == 1


@pytest.mark.slow  # starts a kernel
@pytest.mark.parametrize("codestral_config", [EXAM])
async def test_a_request_naming_another_notebook_is_refused_by_its_kernels_session(
    complete: Any, fake_backend: FakeFimServer, jp_fetch: Any, codestral_config: Any
) -> None:
    session = json.loads((await jp_fetch(
        "api", "sessions", method="POST",
        body=json.dumps({"path": "exams/final.ipynb", "type": "notebook", "kernel": {"name": "python3"}}),
    )).body)
    try:
        status, body = await complete(notebook_request(path="scratch.ipynb", kernel_id=session["kernel"]["id"]))
        assert status == 403 and "exams/final.ipynb" in body["error"]["message"]
        assert fake_backend.request_count == 0
    finally:
        await jp_fetch("api", "sessions", session["id"], method="DELETE")


def test_path_patterns_match_like_the_command_line() -> None:
    policy = PathPolicy(("exams/**", "**/*-exam.ipynb"))
    assert policy.reason(["exams/a.ipynb"]) and policy.reason(["exams/x/y/z.ipynb"])
    assert policy.reason(["midterm-exam.ipynb"]) and policy.reason(["a/b/final-exam.ipynb"])
    assert not policy.reason(["examples/exams.ipynb"]) and not policy.reason(["notes/exam-prep.ipynb"])
    assert not policy.reason([None])  # an untitled document is not under a disabled path
    assert normalize_path("a/./b/../c.ipynb") == "a/c.ipynb" and normalize_path("../../exams/x") == "exams/x"
    assert PathPolicy((), ("lectures/**",)).reason([None])  # allowed_paths: only what matches


def test_policy_paths_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_codestral.app import CodestralExtension

    monkeypatch.setenv("JUPYTER_CODESTRAL_DISABLED_PATHS", '["exams/**"]')
    assert CodestralExtension().disabled_paths == ["exams/**"]
    monkeypatch.setenv("JUPYTER_CODESTRAL_ALLOWED_PATHS", "lectures/**")
    app = CodestralExtension()
    assert app.allowed_paths is None
    assert "JUPYTER_CODESTRAL_ALLOWED_PATHS must be a JSON list" in app.config_problems["allowed_paths"]


# -- secrets ----------------------------------------------------------------------------------------

BIG = {"prefix_tokens": 30000, "suffix_tokens": 30000}


def leaked(secret: str, text: str) -> bool:
    """Whether any long piece of ``secret`` (a key block's line, say) is in ``text``."""
    pieces = [p for p in secret.replace("\\n", "\n").split("\n") if len(p) >= 8]
    return any(p in text for p in pieces)


@pytest.mark.parametrize("codestral_config", [BIG])
async def test_no_secret_of_the_corpus_reaches_the_remote_backend(
    complete: Any, fake_backend: FakeFimServer, jp_fetch: Any, codestral_config: Any
) -> None:
    assert len(SECRETS) >= 40
    secret_cells = [{"cell_type": "code", "source": source} for _, source, _ in SECRETS]
    here = {"cell_type": "code", "source": "result = "}
    sent = 0
    # Every secret in the earlier cells, then in the later cells, then each in the cell being typed.
    for cells, index in (([*secret_cells, here], len(secret_cells)), ([here, *secret_cells], 0)):
        status, _ = await complete({"cells": cells, "cell_index": index, "cursor": 9, "path": "keys.ipynb"})
        assert status == 200
        text = sent_text(fake_backend)
        sent += sum(leaked(secret, text) for _, _, secret in SECRETS)
        # They were sent, without their secrets: the code around each one is there.
        assert text.count(PLACEHOLDER) >= len(SECRETS)
    for kind, source, secret in SECRETS:
        cell = {"cell_type": "code", "source": source + "\nprint("}
        status, _ = await complete({"cells": [cell], "cell_index": 0, "cursor": len(cell["source"]), "path": "k.ipynb"})
        assert status == 200, kind
        sent += leaked(secret, sent_text(fake_backend))
    assert sent == 0
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert status["redaction"]["on"] and status["redaction"]["redacted"] >= 3 * len(SECRETS)


@pytest.mark.parametrize("codestral_config", [BIG])
async def test_ordinary_cells_are_sent_byte_for_byte(complete: Any, fake_backend: FakeFimServer) -> None:
    assert len(ORDINARY) >= 40
    cells = [{"cell_type": "code", "source": source} for source in ORDINARY]
    here = {"cell_type": "code", "source": "summary = "}
    for layout, index in (([*cells, here], len(cells)), ([here, *cells], 0)):
        status, body = await complete({"cells": layout, "cell_index": index, "cursor": 10, "path": "data.ipynb"})
        assert status == 200 and body["timings"]["redactions"] == 0
        text = sent_text(fake_backend)
        changed = [source for source in ORDINARY if source.rstrip() not in text]
        assert changed == []


@pytest.mark.parametrize("codestral_config", [{"redact_secrets": False}])
async def test_redaction_can_be_turned_off(complete: Any, fake_backend: FakeFimServer, codestral_config: Any) -> None:
    _, source, secret = SECRETS[0]
    await complete({"cells": [{"cell_type": "code", "source": source + "\n"}], "cell_index": 0, "cursor": 0})
    assert secret in sent_text(fake_backend)


def test_a_secret_around_the_cursor_is_found_whole() -> None:
    from jupyter_codestral.context import FimContext
    from jupyter_codestral.redaction import redact_context

    _, source, secret = next(case for case in SECRETS if case[0] == "github classic")
    cut = source.index(secret) + 10
    context = FimContext("", source[:cut], source[cut:], "", "python", True, 0, 0)
    redacted = redact_context(context)
    assert redacted.count == 1
    assert secret[:10] not in redacted.context.cell_prefix and secret[10:] not in redacted.context.cell_suffix


def test_text_without_secrets_is_the_same_object() -> None:
    from jupyter_codestral.context import FimContext
    from jupyter_codestral.redaction import redact_context

    context = FimContext("".join(ORDINARY), "x = ", "", "", "python", True, 0, 0)
    assert redact_context(context).context is context
    assert all(secret_spans(source) == () for source in ORDINARY)


async def test_the_teaching_demo_keeps_answers_and_checks_to_the_student(
    complete: Any, fake_backend: FakeFimServer
) -> None:
    from pathlib import Path

    demo = json.loads((Path(__file__).parent.parent / "binder" / "teaching-exercises.ipynb").read_text())
    cells = [{k: c[k] for k in ("cell_type", "source", "metadata")} for c in demo["cells"]]
    exercise = next(i for i, c in enumerate(cells) if "no-completion" in c["metadata"].get("tags", []))
    status, body = await complete({"cells": cells, "cell_index": exercise, "cursor": 0, "path": "t.ipynb"})
    assert status == 200 and "no-completion" in body["off"] and fake_backend.request_count == 0
    # A new cell at the end completes, and the answer checks are not in its prompt.
    cells.append({"cell_type": "code", "source": "print("})
    status, body = await complete({"cells": cells, "cell_index": len(cells) - 1, "cursor": 6, "path": "t.ipynb"})
    assert status == 200 and "off" not in body
    assert "assert warmest" not in sent_text(fake_backend) and "celsius_to_fahrenheit" in sent_text(fake_backend)


def test_the_command_line_shows_what_redaction_replaces(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_notebook

    from jupyter_codestral.cli import main

    cells = [{"cell_type": "code", "source": source} for _, source, _ in SECRETS[:3]] + [
        {"cell_type": "code", "source": ORDINARY[0]}
    ]
    path = write_notebook(tmp_path / "keys.ipynb", cells)
    with pytest.raises(SystemExit) as done:
        main(["redact", str(path)])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.count(PLACEHOLDER) == 3 + 1  # three lines, and the summary names the placeholder
    assert all(secret not in out for _, _, secret in SECRETS[:3])
    assert "cell 0, line 1:" in out and "3 secrets would be replaced" in out


def test_policy_paths_on_the_command_line_as_a_list_literal() -> None:
    from traitlets.config import Config
    from traitlets.config.loader import DeferredConfigString

    from jupyter_codestral.app import CodestralExtension

    # What jupyter_server hands an extension for --CodestralExtension.disabled_paths=['exams/**', ...].
    given = DeferredConfigString("['exams/**', '**/*-exam.ipynb']")
    app = CodestralExtension(config=Config({"CodestralExtension": {"disabled_paths": given}}))
    assert app.disabled_paths == ["exams/**", "**/*-exam.ipynb"] and not app.config_problems
