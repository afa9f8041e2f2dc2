"""Each backend over real HTTP against the loopback server, errors included."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from fake_backends import FAKE_KEY, FakeFimServer
from traitlets.config import Config

from jupyter_codestral.app import CodestralExtension
from jupyter_codestral.backends import create_backend
from jupyter_codestral.backends.base import Backend, FimRequest, Scored
from jupyter_codestral.backends.event_streams import MAX_LINE_CHARS, EventStream, LineBuffer
from jupyter_codestral.assembly import backend_settings
from jupyter_codestral.context import ContextBudget
from jupyter_codestral.prompt_source import PromptSource
from jupyter_codestral.errors import BackendError
from jupyter_codestral.request import Cell, CompletionRequest

CELLS = (Cell("code", "import numpy as np"), Cell("code", "x = np."), Cell("code", "print(x)"))


def fim_request(**kw: Any) -> FimRequest:
    req = CompletionRequest(CELLS, 1, len(CELLS[1].source))
    return FimRequest(PromptSource(req), ContextBudget(), max_tokens=kw.pop("max_tokens", 32), **kw)


def make(fake: FakeFimServer, name: str, **kw: Any) -> Backend:
    """A backend of kind ``name`` on the loopback server, from the extension's own settings (``kw``)."""
    app = CodestralExtension(config=Config({"CodestralExtension": {
        "backend": name, "url": fake.url, "model": "qwen2.5-coder", "timeout": 2.0, "retries": 2, **kw}}))
    settings = replace(backend_settings(app), api_key=FAKE_KEY if name == "mistral" else None,
                       key_name="CODESTRAL_API_KEY", retry_backoff=0.01)
    return create_backend(settings)


async def collect(backend: Backend, request: FimRequest | None = None, close: bool = True) -> str:
    try:
        return "".join([piece async for piece in backend.serve(request or fim_request())])
    finally:
        if close:
            await backend.aclose()


@pytest.fixture
def fake(fake_backend: FakeFimServer) -> FakeFimServer:
    return fake_backend


ALL = ["mistral", "openai", "ollama", "llamacpp"]


@pytest.mark.parametrize("name", ALL)
async def test_each_backend_streams_a_completion(fake: FakeFimServer, name: str) -> None:
    assert await collect(make(fake, name)) == "df.head()"
    assert len(fake.requests) == 1
    assert fake.last.headers["Content-Type"] == "application/json"


async def test_mistral_wire_format(fake: FakeFimServer) -> None:
    await collect(make(fake, "mistral", model="codestral-latest", temperature=0.2), fim_request(stop=("\n# %%",)))
    sent = fake.last
    assert sent.path == "/v1/fim/completions"
    assert sent.headers["Authorization"] == f"Bearer {FAKE_KEY}"
    assert sent.body["prompt"].endswith("x = np.") and sent.body["suffix"].lstrip().startswith("# %%\nprint(x)")
    assert sent.body | {"prompt": "", "suffix": ""} == {
        "model": "codestral-latest", "prompt": "", "suffix": "", "max_tokens": 32,
        "temperature": 0.2, "stream": True, "stop": ["\n# %%"],
    }


async def test_openai_sends_a_raw_fim_prompt_in_the_model_template(fake: FakeFimServer) -> None:
    await collect(make(fake, "openai", model="Qwen/Qwen2.5-Coder-1.5B"))
    prompt = fake.last.body["prompt"]
    assert prompt.startswith("<|fim_prefix|>") and "<|fim_suffix|>" in prompt and prompt.endswith("<|fim_middle|>")
    assert "<|endoftext|>" in fake.last.body["stop"] and "suffix" not in fake.last.body


async def test_openai_with_suffix_support_sends_prefix_and_suffix(fake: FakeFimServer) -> None:
    await collect(make(fake, "openai", openai_suffix=True))
    assert fake.last.body["prompt"].endswith("x = np.") and "print(x)" in fake.last.body["suffix"]


async def test_openai_template_follows_the_model_name(fake: FakeFimServer) -> None:
    await collect(make(fake, "openai", model="bigcode/starcoder2-3b"))
    assert fake.last.body["prompt"].startswith("<fim_prefix>")


async def test_ollama_wire_format(fake: FakeFimServer) -> None:
    await collect(make(fake, "ollama", model="qwen2.5-coder:1.5b"))
    body = fake.last.body
    assert fake.last.path == "/api/generate"
    assert body["prompt"].endswith("x = np.") and "print(x)" in body["suffix"]
    assert body["options"]["num_predict"] == 32 and body["stream"] is True


async def test_llamacpp_split_layout_sends_later_cells_as_input_extra(fake: FakeFimServer) -> None:
    await collect(make(fake, "llamacpp", prompt_layout="split"))
    body = fake.last.body
    assert fake.last.path == "/infill" and body["cache_prompt"] is True and body["n_predict"] == 32
    assert body["input_prefix"].endswith("x = np.") and "print(x)" not in body["input_suffix"]
    assert body["input_extra"] == [{"filename": "later_cells.py", "text": "# %%\nprint(x)\n"}]


async def test_llamacpp_is_asked_to_move_what_it_read_when_the_prompt_start_moves(fake: FakeFimServer) -> None:
    await collect(make(fake, "llamacpp"))
    body = fake.last.body
    # llama.cpp's server shifts runs of this many tokens it keeps in its cache (cache_prompt) into place.
    assert body["cache_prompt"] is True and body["n_cache_reuse"] == 16


async def test_llamacpp_inline_layout_keeps_later_cells_in_the_suffix(fake: FakeFimServer) -> None:
    await collect(make(fake, "llamacpp", prompt_layout="inline"))
    assert "print(x)" in fake.last.body["input_suffix"] and fake.last.body["input_extra"] == []


# -- failures ---------------------------------------------------------------


async def expect_error(backend: Backend, kind: str, *fragments: str, close: bool = True) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await collect(backend, close=close)
    assert caught.value.kind == kind, caught.value
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value


@pytest.mark.parametrize("name", ALL)
async def test_connection_refused(fake: FakeFimServer, name: str) -> None:
    await fake.stop()
    backend = make(fake, name)
    await expect_error(backend, "unreachable", fake.url)


@pytest.mark.parametrize("name", ALL)
async def test_timeout_before_the_first_token(fake: FakeFimServer, name: str) -> None:
    fake.reset(delay_first=3.0)
    await expect_error(make(fake, name, timeout=0.3), "timeout", "0.3 s")


@pytest.mark.parametrize("name", ALL)
async def test_a_stream_that_stalls_midway_times_out(fake: FakeFimServer, name: str) -> None:
    fake.reset(chunks=["a", "b", "c"], delay_between=3.0)
    await expect_error(make(fake, name, timeout=0.3), "timeout")


@pytest.mark.parametrize("name", ALL)
async def test_a_stream_cut_off_midway(fake: FakeFimServer, name: str) -> None:
    fake.reset(chunks=["a", "b", "c", "d"], cut_after=2)
    await expect_error(make(fake, name), "bad_reply")


@pytest.mark.parametrize("name", ALL)
async def test_a_stream_that_ends_without_its_final_marker(fake: FakeFimServer, name: str) -> None:
    fake.reset(omit_done=True)
    await expect_error(make(fake, name), "bad_reply", "ended the stream")


@pytest.mark.parametrize("name", ALL)
async def test_malformed_events(fake: FakeFimServer, name: str) -> None:
    fake.reset(chunks=["a", "b"], malformed_after=1)
    await expect_error(make(fake, name), "bad_reply", "malformed")


@pytest.mark.parametrize("name", ALL)
async def test_server_errors_are_retried_with_backoff_then_succeed(fake: FakeFimServer, name: str) -> None:
    fake.reset(status=503, fail_times=2)
    assert await collect(make(fake, name, retries=2)) == "df.head()"
    assert len(fake.requests) == 3


@pytest.mark.parametrize("name", ALL)
async def test_retries_are_bounded(fake: FakeFimServer, name: str) -> None:
    fake.reset(status=500)
    await expect_error(make(fake, name, retries=2), "server_error", "500")
    assert len(fake.requests) == 3


async def test_no_retry_once_text_has_streamed(fake: FakeFimServer) -> None:
    fake.reset(chunks=["a", "b", "c"], cut_after=1)
    await expect_error(make(fake, "mistral", retries=3), "bad_reply")
    assert len(fake.requests) == 1


async def test_mistral_422_reports_the_validation_detail(fake: FakeFimServer) -> None:
    backend = make(fake, "mistral", temperature=3.0)
    await expect_error(backend, "rejected", "422", "temperature")


async def test_mistral_401_names_key_and_host(fake: FakeFimServer) -> None:
    fake.key = "another-key"
    error = await expect_error(make(fake, "mistral"), "auth", "CODESTRAL_API_KEY", fake.url, "not interchangeable")
    assert error.status == 502


async def test_429_retry_after_blocks_requests_until_it_passes(fake: FakeFimServer) -> None:
    fake.reset(status=429, headers={"Retry-After": "1"})
    backend = make(fake, "mistral")
    error = await expect_error(backend, "rate_limited", close=False)
    assert error.retry_after == pytest.approx(1.0, abs=0.1)
    fake.reset()
    await expect_error(backend, "rate_limited", "next request may be sent", close=False)
    assert fake.requests == []
    await asyncio.sleep(1.05)
    assert await collect(backend) == "df.head()"


async def test_429_with_an_http_date(fake: FakeFimServer) -> None:
    import email.utils

    fake.reset(status=429, headers={"Retry-After": email.utils.formatdate(time.time() + 120, usegmt=True)})
    error = await expect_error(make(fake, "mistral"), "rate_limited")
    assert 100 < (error.retry_after or 0) <= 120


async def test_backend_404_suggests_the_wrong_kind_of_server(fake: FakeFimServer) -> None:
    backend = make(fake, "openai")
    backend.path = "/nothing-here"  # type: ignore[misc]
    await expect_error(backend, "rejected", "404")


def test_line_buffer_joins_lines_and_characters_split_between_pieces() -> None:
    buffer = LineBuffer()
    encoded = "x = 'é'\r\ny = 1\nlast".encode()
    cut = encoded.index(b"\xa9")  # inside the two bytes of "é"
    assert buffer.feed(encoded[:cut]) == []
    assert buffer.feed(encoded[cut:]) == ["x = 'é'", "y = 1"]
    assert buffer.feed(b"", final=True) == ["last"]


def test_a_line_or_event_without_end_is_refused_before_it_fills_the_memory() -> None:
    with pytest.raises(ValueError, match="a line of more than"):
        LineBuffer().feed(b"x" * (MAX_LINE_CHARS + 1))
    with pytest.raises(ValueError, match="an event of more than"):
        EventStream().feed(b"data: 0123456789abcdef\n" * (MAX_LINE_CHARS // 16 + 1))


@pytest.mark.parametrize("name", ALL)
async def test_an_endless_line_is_a_readable_error(fake: FakeFimServer, name: str) -> None:
    fake.reset(raw_body=b"data: " + b"x" * (MAX_LINE_CHARS + 10))  # and no line end
    with pytest.raises(BackendError) as caught:
        await collect(make(fake, name))
    assert caught.value.kind == "bad_reply" and "a line of more than" in str(caught.value)


def test_event_stream_follows_the_event_stream_rules() -> None:
    events = EventStream()
    assert events.feed(b": a comment\nevent: x\ndata: {\"a\"") == []
    assert events.feed(b": 1}\n\ndata:first\ndata: second\n\ndata: tail") == ['{"a": 1}', "first\nsecond"]
    assert events.feed(b"", final=True) == ["tail"]


@pytest.mark.parametrize("name", ALL)
async def test_tokens_that_arrive_together_are_one_piece(fake: FakeFimServer, name: str) -> None:
    backend = make(fake, name)
    try:
        fake.reset(chunks=["df", ".he", "ad()"], one_write=True)
        assert [piece async for piece in backend.serve(fim_request())] == ["df.head()"]
        fake.reset(chunks=["df", ".he", "ad()"], delay_between=0.05)
        assert [piece async for piece in backend.serve(fim_request())] == ["df", ".he", "ad()"]
    finally:
        await backend.aclose()


# -- the tokens' log-probabilities (a suggestion's confidence) ------------------------------------------


@pytest.mark.parametrize(("name", "field"), [("openai", "logprobs"), ("llamacpp", "n_probs")])
async def test_asked_for_confidence_a_backend_reports_its_tokens_log_probabilities(
    fake: FakeFimServer, name: str, field: str
) -> None:
    backend = make(fake, name, min_confidence=-1.0)
    fake.reset(chunks=["df", ".head", "()"], logprob=-0.5)
    try:
        pieces = [piece async for piece in backend.serve(fim_request())]
    finally:
        await backend.aclose()
    assert fake.last.body[field] == 1
    assert all(isinstance(piece, Scored) for piece in pieces)
    assert "".join(p.text for p in pieces) == "df.head()"  # type: ignore[union-attr]
    assert sum(p.tokens for p in pieces) == 3 and sum(p.logprob for p in pieces) == -1.5  # type: ignore[union-attr]
    # Not asked (no min_confidence): not requested, plain text.
    plain = make(fake, name)
    await collect(plain)
    assert field not in fake.last.body
