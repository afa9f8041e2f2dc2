"""A configuration that cannot work leaves the server running and says what to fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import notebook_request

CASES = [
    # (settings in jupyter_server_config.py, environment, what the message must name)
    ({}, {"JUPYTER_CODESTRAL_BACKEND": "openai", "JUPYTER_CODESTRAL_URL": "localhost:8080"},
     ["'localhost:8080'", "JUPYTER_CODESTRAL_URL"]),
    ({"url": "localhost:8080"}, {"CODESTRAL_API_KEY": "k"}, ["'localhost:8080'", "CodestralExtension.url"]),
    ({"backend": "gpt"}, {}, ["Unknown backend 'gpt'", "CodestralExtension.backend"]),
    ({}, {"JUPYTER_CODESTRAL_BACKEND": "gpt"}, ["Unknown backend 'gpt'", "JUPYTER_CODESTRAL_BACKEND"]),
    ({"prefix_tokens": "many", "backend": "openai"}, {}, ["CodestralExtension.prefix_tokens", "'many'"]),
]


@pytest.fixture(params=CASES, ids=["env url", "config url", "config backend", "env backend", "wrong type"])
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def jp_server_config(case: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    traits, env, _ = case
    for name in ("CODESTRAL_API_KEY", "MISTRAL_API_KEY", "JUPYTER_CODESTRAL_BACKEND", "JUPYTER_CODESTRAL_URL",
                 "JUPYTER_CODESTRAL_MODEL", "JUPYTER_CODESTRAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"ServerApp": {"jpserver_extensions": {"jupyter_codestral": True}, "allow_root": True},
            "CodestralExtension": traits}


async def test_the_server_runs_and_says_what_to_fix(case: Any, jp_fetch: Any, complete: Any) -> None:
    _, _, fragments = case
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert status["state"] == "error" and not status["ready"]
    assert all(f in status["config_error"] for f in fragments), status["config_error"]
    code, reply = await complete(notebook_request())
    assert code == 503 and reply["error"]["kind"] == "config"
    assert all(f in reply["error"]["message"] for f in fragments), reply
