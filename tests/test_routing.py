"""Several backends: the route each completion takes, and the fallback when a backend fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import serve_fake, the_app, wait_until
from fake_backends import FAKE_KEY, FakeFimServer, Script

from jupyter_codestral.context import ContextBudget, build_context
from jupyter_codestral.request import parse_completion_request
from jupyter_codestral.routes import route_kind

# -- route kinds, from real cursor positions ----------------------------------------------


def kind_at(source: str, marker: str = "|", language: str = "python", single_line: bool = False) -> str:
    cursor = source.index(marker)
    cells = [{"cell_type": "code", "source": "import pandas as pd"},
             {"cell_type": "markdown" if language == "markdown" else "code", "source": source.replace(marker, "")}]
    request = parse_completion_request(json.dumps({"cells": cells, "cell_index": 1, "cursor": cursor,
                                                   "language": language}).encode())
    return route_kind(build_context(request, ContextBudget(1024, 256)), single_line)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("df = pd.read_csv('x.csv')\ndf.|", "line"),  # the end of a line with code
        ("total = compute(|, axis=1)", "line"),  # code to the right of the cursor
        ("df = pd.read_csv('x.csv')\n|", "block"),  # a new line
        ("def area(r):\n    |", "block"),  # an empty indented line
        ("", "block"),
        ("x = 1  # the number of |", "comment"),
        ("# Load the data and |", "comment"),
        ('def area(r):\n    """Return the |', "comment"),  # inside a docstring
        ('s = "# not a comment" + |', "line"),  # a hash inside a string
    ],
)
def test_the_route_kind_follows_the_cursor(source: str, kind: str) -> None:
    assert kind_at(source + ("|" if "|" not in source else "")) == kind


def test_markdown_and_single_line_routes() -> None:
    assert kind_at("# Results\nThe model |", language="markdown") == "markdown"
    assert kind_at("df = load()\n|", single_line=True) == "line"


# -- over loopback: two backends --------------------------------------------------------------------


@pytest.fixture
def second_backend(jp_asyncio_loop: Any) -> Iterator[FakeFimServer]:
    for fake in serve_fake(jp_asyncio_loop):
        fake.script = Script(chunks=["from", "_fallback()"])
        yield fake



@pytest.fixture
def codestral_config(fake_backend: FakeFimServer, second_backend: FakeFimServer,
                     request: pytest.FixtureRequest) -> dict[str, Any]:
    param = dict(getattr(request, "param", {}))  # the first backend's settings, and perhaps other routes
    routes = param.pop("routes", None)
    primary = {"backend": "mistral", "url": fake_backend.url, "cooldown_ms": 400, **param}
    return {
        "backends": {
            "codestral": primary,
            "fallback": {"backend": "openai", "url": second_backend.url, "model": "qwen-fallback",
                         "api_key_env": "CODESTRAL_API_KEY"},
        },
        "routes": routes or {"line": ["codestral", "fallback"], "block": ["fallback"], "comment": ["codestral", "fallback"]},
    }


def end_of(source: str) -> dict[str, Any]:
    cells = [{"cell_type": "code", "source": "import pandas as pd"}, {"cell_type": "code", "source": source}]
    return {"cells": cells, "cell_index": 1, "cursor": len(source), "path": "r.ipynb"}


async def test_each_reply_says_its_route_and_backend(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer
) -> None:
    status, body = await complete(end_of("df."))
    assert status == 200 and body["route"] == "line" and body["backend"] == "codestral"
    assert body["completion"] == "df.head()"  # the first backend's text
    status, lines = await complete({**end_of("df = 1\n"), "stream": True})
    assert status == 200 and lines[-1]["route"] == "block" and lines[-1]["backend"] == "fallback"
    assert lines[-1]["completion"] == "from_fallback()"
    assert fake_backend.request_count == 1 and second_backend.request_count == 1


FAILURES = {
    "unreachable": {},
    "server_error": {"status": 500},
    "rate_limited": {"status": 429, "headers": {"Retry-After": "30"}},
    "first_token_timeout": {"delay_first": 3.0},
    "key_refused": {"status": 401},
}


@pytest.mark.parametrize("codestral_config", [{"first_token_timeout_ms": 400}], indirect=True)
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_the_next_backend_answers_when_the_first_fails(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, failure: str,
    jp_serverapp: Any, codestral_config: Any,
) -> None:
    if failure == "unreachable":
        await fake_backend.stop()  # nothing listens there any more
    else:
        fake_backend.script = Script(**FAILURES[failure])
    status, lines = await complete({**end_of("df."), "stream": True})
    assert status == 200, lines
    done = lines[-1]
    assert done["completion"] == "from_fallback()" and done["backend"] == "fallback" and done["route"] == "line"
    assert done["fallback_reason"]
    state = the_app(jp_serverapp).service.status()["backends"]["codestral"]
    assert state["state"] == "cooling_down" and state["last_error"]["message"]
    if failure == "rate_limited":
        assert state["skipped_until"] is not None and state["last_error"]["kind"] == "rate_limited"


async def test_an_outage_costs_one_failure_then_the_first_backend_comes_back(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, jp_fetch: Any
) -> None:
    fake_backend.script = Script(status=500)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "fallback"
    tried = fake_backend.request_count  # the failure, with its retry
    for _ in range(3):  # during the cool-down: straight to the fallback, no time lost on the first
        status, body = await complete(end_of("df."))
        assert status == 200 and body["backend"] == "fallback" and "fallback_reason" not in body
    assert fake_backend.request_count == tried
    status_body = json.loads((await jp_fetch("codestral", "status")).body)
    assert status_body["backends"]["codestral"]["state"] == "cooling_down"
    assert status_body["routes"]["line"] == ["codestral", "fallback"]
    # It recovers; after the cool-down the next request tries it again, and it serves again.
    fake_backend.script = Script(chunks=["head()"])
    await asyncio.sleep(0.5)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "codestral" and body["completion"] == "head()"
    status_body = json.loads((await jp_fetch("codestral", "status")).body)
    assert status_body["backends"]["codestral"]["state"] == "ready"


async def test_when_every_backend_fails_the_reply_says_why(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer
) -> None:
    fake_backend.script = Script(status=500)
    second_backend.script = Script(status=500)
    status, body = await complete(end_of("df."))
    assert status == 502 and body["error"]["kind"] == "server_error"
    assert FAKE_KEY not in json.dumps(body)


@pytest.mark.parametrize(
    ("codestral_config", "says"),
    [
        ({"backends": {"a": {"backend": "mistral"}}, "routes": {"line": ["b"]}}, "unknown backend 'b'"),
        ({"backends": {"a": {"backend": "gpt"}}}, "unknown backend 'gpt'"),
        ({"backends": {"a": {"backend": "openai", "price": 1}}}, "unknown setting 'price'"),
        ({"backends": {"a": {"backend": "mistral"}}, "routes": {"inline": ["a"]}}, "Unknown route 'inline'"),
        ({"backends": {"a": {"backend": "openai", "url": "gpu-box:8000"}}}, "must start with http"),
        ({"backends": {"a": {"backend": "openai", "timeout": 0}}}, "timeout must be a positive number"),
        ({"backends": {"a": {"backend": "openai", "prefix_tokens": "all"}}}, "prefix_tokens must be a positive"),
    ],
)
async def test_a_wrong_routing_configuration_is_readable_and_the_server_runs(
    complete: Any, jp_fetch: Any, codestral_config: Any, says: str
) -> None:
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert says in status["config_error"] and "CodestralExtension." in status["config_error"]
    code, body = await complete(end_of("df."))
    assert code == 503 and says in body["error"]["message"]


def test_routing_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_codestral.app import CodestralExtension

    monkeypatch.setenv("JUPYTER_CODESTRAL_BACKENDS", '{"embedded": {"backend": "local"}}')
    monkeypatch.setenv("JUPYTER_CODESTRAL_ROUTES", '{"line": ["embedded"]}')
    app = CodestralExtension()
    assert app.backends == {"embedded": {"backend": "local"}} and app.routes == {"line": ["embedded"]}
    monkeypatch.setenv("JUPYTER_CODESTRAL_BACKENDS", "{not json")
    app = CodestralExtension()
    assert app.backends == {}
    assert "JUPYTER_CODESTRAL_BACKENDS is not valid JSON" in app.config_problems["backends"]


def test_the_global_redaction_setting_applies_to_every_named_backend() -> None:
    from traitlets.config import Config

    from jupyter_codestral.app import CodestralExtension
    from jupyter_codestral.assembly import route_spec

    remote = {"backend": "openai", "url": "http://127.0.0.1:9"}
    default = CodestralExtension()
    assert route_spec(default, "gpu", remote).settings.redact_secrets
    assert not route_spec(default, "embedded", {"backend": "embedded"}).settings.redact_secrets
    off = CodestralExtension(config=Config({"CodestralExtension": {"redact_secrets": False}}))
    assert not route_spec(off, "gpu", remote).settings.redact_secrets
    assert route_spec(off, "gpu", {**remote, "redact_secrets": True}).settings.redact_secrets


# -- hedging ----------------------------------------------------------------------------------------


def hedged(hedge_ms: float) -> dict[str, Any]:
    return {"routes": {"line": {"backends": ["codestral", "fallback"], "hedge_ms": hedge_ms}}}


@pytest.mark.parametrize("codestral_config", [hedged(300)], indirect=True)
async def test_a_silent_first_backend_is_hedged_after_hedge_ms_and_the_loser_cancelled(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, jp_fetch: Any, codestral_config: Any
) -> None:
    fake_backend.script = Script(chunks=["slow()"], delay_first=1.2)  # within its first-token timeout
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "fallback" and body["completion"] == "from_fallback()"
    started_after = second_backend.requests[0].at - fake_backend.requests[0].at
    assert 0.28 <= started_after < 1.0  # the second started only after hedge_ms, long before the first spoke
    await wait_until(lambda: fake_backend.disconnects)  # the loser's connection is closed at once
    assert fake_backend.disconnects == 1 and fake_backend.finished == 0
    usage = json.loads((await jp_fetch("codestral", "status")).body)["usage"]["backends"]
    assert usage["codestral"]["cancelled"] == 1 and usage["fallback"]["cancelled"] == 0
    # A hedge lost is not a failure: the first backend is not cooled down.
    assert json.loads((await jp_fetch("codestral", "status")).body)["backends"]["codestral"]["state"] == "ready"


@pytest.mark.parametrize("codestral_config", [hedged(0)], indirect=True)
async def test_a_hedge_of_zero_ms_starts_both_backends_at_once(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, codestral_config: Any
) -> None:
    fake_backend.script = Script(chunks=["slow()"], delay_first=1.2)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "fallback"
    assert second_backend.requests[0].at - fake_backend.requests[0].at < 0.2


@pytest.mark.parametrize("codestral_config", [hedged(300)], indirect=True)
async def test_a_first_backend_that_answers_before_hedge_ms_is_not_hedged(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, codestral_config: Any
) -> None:
    fake_backend.script = Script(chunks=["head()"], delay_first=0.05)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "codestral" and body["completion"] == "head()"
    await asyncio.sleep(0.4)
    assert second_backend.request_count == 0


@pytest.mark.parametrize("codestral_config", [hedged(300)], indirect=True)
async def test_a_hedge_that_fails_leaves_the_first_backend_to_answer(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, codestral_config: Any
) -> None:
    fake_backend.script = Script(chunks=["head()"], delay_first=0.6)
    second_backend.script = Script(status=500)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "codestral" and body["completion"] == "head()"
    assert second_backend.request_count >= 1


@pytest.mark.parametrize(
    ("codestral_config", "says"),
    [
        ({"routes": {"line": {"backends": ["codestral"], "hedge": 3}}}, "unknown setting 'hedge'"),
        ({"routes": {"line": {"backends": ["codestral"], "hedge_ms": "soon"}}}, "hedge_ms must be a number"),
    ],
    indirect=["codestral_config"],
)
async def test_a_wrong_hedge_is_readable(jp_fetch: Any, codestral_config: Any, says: str) -> None:
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert says in status["config_error"]


# -- with only a Codestral key: Codestral, and the embedded model when it fails ------------------------


@pytest.mark.slow
async def test_a_codestral_key_alone_means_codestral_with_the_embedded_model_loaded_on_first_need(
    fake_backend: FakeFimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_codestral.app import CodestralExtension
    from jupyter_codestral.assembly import assemble

    for name in ("JUPYTER_CODESTRAL_BACKEND", "JUPYTER_CODESTRAL_BACKENDS", "JUPYTER_CODESTRAL_ROUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CODESTRAL_API_KEY", FAKE_KEY)
    monkeypatch.setenv("JUPYTER_CODESTRAL_URL", fake_backend.url)
    service = assemble(CodestralExtension()).service
    try:
        await service.start()
        status = service.status()
        # Edits too: Codestral rewrites, fixes and documents, the embedded model when it fails.
        kinds = ("line", "block", "comment", "rewrite", "fix", "document")
        assert status["routes"] == {kind: ["codestral", "embedded"] for kind in kinds}
        assert status["backends"]["codestral"]["base_url"] == fake_backend.url
        assert status["backends"]["embedded"]["state"] == "idle" and status["backends"]["embedded"]["worker_pid"] is None
        assert status["state"] == "ready"  # Codestral can answer: nothing waits for the embedded model

        request = service.parse(json.dumps(end_of("df.")).encode(), "u")
        done = [event async for event in service.serve(request, "u")][-1]
        assert done["backend"] == "codestral" and service.status()["backends"]["embedded"]["worker_pid"] is None

        fake_backend.script = Script(status=401)  # the key stops working: now the embedded model is needed
        request = service.parse(json.dumps(end_of("df.")).encode(), "u")
        with pytest.raises(Exception, match="embedded model is not ready"):
            [event async for event in service.serve(request, "u")]
        assert service.status()["backends"]["embedded"]["state"] != "idle"  # it is loading now
    finally:
        await service.aclose()


# -- a context budget per backend ---------------------------------------------------------------------


@pytest.mark.parametrize("codestral_config", [{"prefix_tokens": 300}], indirect=True)
async def test_each_backend_reads_the_context_its_own_budget_allows(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, codestral_config: Any
) -> None:
    earlier = [{"cell_type": "code", "source": f"step_{i} = load_part({i})  # part {i} of the data"} for i in range(30)]
    body = {**end_of("df."), "cells": [*earlier, {"cell_type": "code", "source": "df."}], "cell_index": 30,
            "cursor": 3}
    fake_backend.script = Script(status=500)  # codestral (300 tokens) fails, the fallback (the default) answers
    status, reply = await complete(body)
    assert status == 200 and reply["backend"] == "fallback"
    small, large = fake_backend.last.body["prompt"], second_backend.last.body["prompt"]
    assert small.endswith("df.") and "step_29" in small and "step_0 " not in small
    assert "step_0 " in large and len(large) > len(small)


async def test_a_failed_backend_is_probed_in_the_background_and_no_keystroke_waits_on_it(
    complete: Any, fake_backend: FakeFimServer, second_backend: FakeFimServer, jp_fetch: Any
) -> None:
    fake_backend.script = Script(status=500)
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "fallback"
    user_requests = len(fake_backend.requests)  # the failure and its retry
    for _ in range(6):  # keystrokes during the outage, across cool-downs: all straight to the fallback
        await asyncio.sleep(0.25)
        status, body = await complete(end_of("df."))
        assert status == 200 and body["backend"] == "fallback" and "fallback_reason" not in body
    probes = fake_backend.requests[user_requests:]
    assert probes, "the backend was probed after its cool-down"
    assert all(r.body["max_tokens"] == 1 and r.body["prompt"].endswith("x = 1\ny = ") for r in probes)
    # It recovers: a probe finds out, and only then do completions go to it again.
    fake_backend.script = Script(chunks=["head()"])
    for _ in range(60):
        state = json.loads((await jp_fetch("codestral", "status")).body)["backends"]["codestral"]["state"]
        if state == "ready":
            break
        await asyncio.sleep(0.1)
    assert state == "ready"
    status, body = await complete(end_of("df."))
    assert status == 200 and body["backend"] == "codestral" and body["completion"] == "head()"
