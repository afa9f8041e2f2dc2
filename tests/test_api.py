"""The HTTP API end to end: Jupyter server → extension → loopback Mistral server."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from conftest import NOTEBOOK, cyclic_garbage, notebook_request, the_app, wait_until
from fake_backends import FAKE_KEY, FakeFimServer


async def test_plain_completion_sends_earlier_cells_in_prompt_and_later_in_suffix(complete: Any, fake_backend: FakeFimServer) -> None:
    status, body = await complete(notebook_request())
    assert status == 200, body
    assert body["completion"] == "df.head()"
    assert body["backend"] == "mistral" and body["model"] == "codestral-latest"
    assert {"context_ms", "first_token_ms", "total_ms"} <= set(body["timings"])
    sent = fake_backend.last.body
    prompt, suffix = sent["prompt"], sent["suffix"]
    assert prompt.index("# Sales analysis") < prompt.index("import pandas") < prompt.index("df = pd.read_csv")
    assert prompt.endswith("df = pd.read_csv('sales.csv')\ndf.")
    assert "# # Sales analysis\n# Load the data first." in prompt  # markdown as comments
    assert "%matplotlib inline" in prompt
    assert suffix.index("df.plot()") < suffix.index("# ## Conclusion")
    assert "RAW-CELL-TEXT" not in prompt + suffix
    assert "df.plot()" not in prompt
    assert sent["stream"] is True and sent["model"] == "codestral-latest"
    assert "\n# %%" in sent["stop"]


async def test_streamed_and_plain_replies_agree(complete: Any, fake_backend: FakeFimServer) -> None:
    _, plain = await complete(notebook_request())
    fake_backend.reset(delay_between=0.05)  # tokens that arrive apart are shown apart
    status, lines = await complete(notebook_request(stream=True))
    assert status == 200
    deltas = [line["delta"] for line in lines if "delta" in line]
    assert len(deltas) >= 2  # it really streamed in pieces
    assert lines[-1]["done"] is True
    assert "".join(deltas) == lines[-1]["completion"] == plain["completion"]


async def test_a_reply_whose_pieces_arrive_together_goes_out_in_one_piece(
    jp_fetch: Any, fake_backend: FakeFimServer
) -> None:
    """Everything the backend sent at once (a short completion, the common case) is sent to the
    browser at once, with its length; pieces that arrive apart still stream (the test above)."""
    fake_backend.reset(one_write=True)
    response = await jp_fetch("codestral", "complete", method="POST", body=json.dumps(notebook_request(stream=True)))
    lines = [json.loads(line) for line in response.body.decode().splitlines()]
    assert [line.get("delta") for line in lines] == ["df.head()", None] and lines[-1]["done"] is True
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert int(response.headers["Content-Length"]) == len(response.body)
    assert "Transfer-Encoding" not in response.headers


async def test_a_completion_leaves_no_reference_cycles(complete: Any) -> None:
    """Nothing a completion allocates waits for the cyclic garbage collector: under load its
    full passes over Jupyter's heap cost more than the completion itself."""
    await complete(notebook_request(stream=True))  # first-use allocations (sessions, pools)
    with cyclic_garbage() as garbage:
        for stream in (True, False, True):
            status, _ = await complete(notebook_request(stream=stream))
            assert status == 200
    assert garbage == []


async def test_plain_file_request(complete: Any, fake_backend: FakeFimServer) -> None:
    status, body = await complete({"text": "import pandas as pd\ndf.", "cursor": 23, "path": "x.py"})
    assert status == 200 and body["completion"] == "df.head()"
    assert fake_backend.last.body["prompt"] == "import pandas as pd\ndf." and "%%" not in fake_backend.last.body["prompt"]


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        ({"cells": NOTEBOOK, "cell_index": 99, "cursor": 0}, 400, "cell_index"),
        ({"cells": NOTEBOOK, "cell_index": 2, "cursor": 10_000}, 400, "cursor"),
        ({"cells": NOTEBOOK, "cell_index": 2, "cursor": -1}, 400, "cursor"),
        ({"cells": NOTEBOOK, "cell_index": "2", "cursor": 0}, 400, "cell_index"),
        ({"cells": NOTEBOOK, "cell_index": True, "cursor": 0}, 400, "cell_index"),
        ({"cells": "abc", "cell_index": 0, "cursor": 0}, 400, "cells"),
        ({"cells": [{"cell_type": "sql", "source": ""}], "cell_index": 0, "cursor": 0}, 400, "cell_type"),
        ({"cells": NOTEBOOK, "cell_index": 3, "cursor": 0}, 400, "raw cells"),
        ({"cells": NOTEBOOK, "cell_index": 2, "cursor": 0, "stream": "yes"}, 400, "stream"),
        ({"cells": NOTEBOOK, "cell_index": 2, "cursor": 0, "max_tokens": 0}, 400, "max_tokens"),
        ({"cursor": 0}, 400, "'cells'"),
        ('{"text": "\\ud800", "cursor": 0}', 400, "surrogate"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(complete: Any, fake_backend: FakeFimServer, body: Any, status: int, fragment: str) -> None:
    code, reply = await complete(body, raw=isinstance(body, str))
    assert code == status
    assert fragment in reply["error"]["message"]
    assert "Traceback" not in json.dumps(reply)
    assert fake_backend.requests == []


@pytest.mark.parametrize("codestral_config", [{"max_body_bytes": 2000}], indirect=True)
async def test_an_oversized_notebook_gets_413(complete: Any, codestral_config: Any) -> None:
    big = notebook_request(cells=[{"cell_type": "code", "source": "x = 1\n" * 1000}], cell_index=0, cursor=0)
    code, reply = await complete(big)
    assert code == 413 and "limit" in reply["error"]["message"]


async def test_requests_without_a_token_are_refused(server_url: str, fake_backend: FakeFimServer) -> None:
    base = server_url
    async with httpx.AsyncClient() as client:
        post = await client.post(f"{base}/complete", json=notebook_request())
        status = await client.get(f"{base}/status")
        wrong = await client.get(f"{base}/status", headers={"Authorization": "token wrong"})
    assert post.status_code == 403 and status.status_code == 403 and wrong.status_code == 403
    assert fake_backend.requests == []


async def test_status_reports_backend_and_latency_without_the_key(complete: Any, jp_fetch: Any) -> None:
    await complete(notebook_request())
    reply = json.loads((await jp_fetch("codestral", "status")).body)
    assert reply["backend"] == "mistral" and reply["ready"] is True and reply["state"] == "ready"
    assert reply["latency"]["served"] == 1 and reply["latency"]["total_ms"]["median"] is not None
    assert reply["base_url"].startswith("http://127.0.0.1:")
    assert FAKE_KEY not in json.dumps(reply)


async def test_the_key_is_sent_only_to_the_backend_and_never_leaks(
    complete: Any, jp_fetch: Any, fake_backend: FakeFimServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    replies = [await complete(notebook_request())]
    fake_backend.reset(status=401, error_body={"message": f"Unauthorized: {FAKE_KEY}"})
    replies.append(await complete(notebook_request()))
    replies.append(await complete(notebook_request(stream=True)))
    fake_backend.reset(status=422, error_body={"detail": [{"loc": ["body", "prompt"], "msg": f"bad {FAKE_KEY}"}]})
    replies.append(await complete(notebook_request()))
    status = (await jp_fetch("codestral", "status")).body.decode()
    assert fake_backend.last.headers["Authorization"] == f"Bearer {FAKE_KEY}"
    everything = json.dumps(replies) + status + "\n".join(r.getMessage() for r in caplog.records)
    assert FAKE_KEY not in everything
    assert "[key hidden]" in everything


async def test_a_401_says_which_key_and_host_were_used(complete: Any, fake_backend: FakeFimServer) -> None:
    fake_backend.reset(status=401, error_body={"message": "Unauthorized", "request_id": "x"})
    code, reply = await complete(notebook_request())
    assert code == 502
    message = reply["error"]["message"]
    assert reply["error"]["kind"] == "auth"
    assert "CODESTRAL_API_KEY" in message and fake_backend.url in message and "not interchangeable" in message


async def test_a_429_passes_the_retry_after_on_and_is_honoured(complete: Any, fake_backend: FakeFimServer, jp_fetch: Any) -> None:
    fake_backend.reset(status=429, headers={"Retry-After": "30"}, error_body={"message": "Requests rate limit exceeded"})
    code, reply = await complete(notebook_request())
    assert code == 429 and reply["error"]["kind"] == "rate_limited"
    assert 29 <= reply["error"]["retry_after"] <= 30
    assert "rate limit exceeded" in reply["error"]["message"]
    # Until the wait is over, nothing is sent to the backend.
    fake_backend.reset()
    code, reply = await complete(notebook_request())
    assert code == 429 and fake_backend.requests == []
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert status["rate_limited_until"] is not None and status["last_error"]["kind"] == "rate_limited"


async def test_a_disconnect_cancels_the_backend_request(jp_serverapp: Any, server_url: str, jp_auth_header: dict[str, str],
                                                       fake_backend: FakeFimServer) -> None:
    fake_backend.reset(chunks=["a"] * 200, delay_between=0.05)
    url = f"{server_url}/complete"
    async with httpx.AsyncClient(headers=jp_auth_header) as client:
        async with client.stream("POST", url, json=notebook_request(stream=True, cell_index=0, cursor=0)) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = json.loads(await anext(lines))
            assert "delta" in first
        # leaving the block closes our connection mid-stream
    await wait_until(lambda: fake_backend.disconnects)
    assert fake_backend.disconnects == 1 and fake_backend.finished == 0
    assert the_app(jp_serverapp).service.stats.cancelled == 1


async def test_a_plain_request_aborted_before_any_token_cancels_the_backend(
    server_url: str, jp_auth_header: dict[str, str], fake_backend: FakeFimServer
) -> None:
    fake_backend.reset(delay_first=5.0)
    url = f"{server_url}/complete"
    async with httpx.AsyncClient(headers=jp_auth_header) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, json=notebook_request(), timeout=0.3)
    await wait_until(lambda: fake_backend.disconnects)
    assert fake_backend.disconnects == 1 and fake_backend.finished == 0


async def test_a_newer_request_for_the_same_document_supersedes_the_one_in_flight(
    jp_serverapp: Any, server_url: str, jp_auth_header: dict[str, str], fake_backend: FakeFimServer
) -> None:
    # The old request's connection stays open (its abort was lost, say, in a
    # proxy): the server still stops it as soon as the newer keystroke arrives.
    fake_backend.reset(chunks=["a"] * 100, delay_between=0.05)
    url = f"{server_url}/complete"
    async with httpx.AsyncClient(headers=jp_auth_header, timeout=10) as client:
        # One user (the login cookie, as in a browser) and one document.
        await client.get(f"{server_url}/status")
        assert client.cookies
        async with client.stream("POST", url, json=notebook_request(stream=True)) as old:
            lines = old.aiter_lines()
            assert json.loads(await anext(lines)).get("delta")
            other_doc = asyncio.ensure_future(client.post(url, json=notebook_request(path="other.ipynb", stream=False)))
            prefetch = asyncio.ensure_future(client.post(url, json=notebook_request(prefetch=True)))
            await asyncio.sleep(0.2)
            assert fake_backend.disconnects == 0  # another document and a prefetch supersede nothing
            fake_backend.reset(chunks=["df", ".head()"])
            newer = await client.post(url, json=notebook_request(stream=False))
            rest = [json.loads(line) async for line in lines if line]
        assert rest[-1]["error"]["kind"] == "cancelled" and "newer request" in rest[-1]["error"]["message"]
        assert newer.status_code == 200 and newer.json()["completion"].endswith("head()")
        assert (await other_doc).status_code == 200 and (await prefetch).status_code == 200
    await wait_until(lambda: fake_backend.disconnects)  # the backend notices the closed connection at its next write
    assert fake_backend.disconnects == 1
    assert the_app(jp_serverapp).service.in_flight() == 0


async def test_a_request_whose_browser_already_left_never_reaches_the_backend(
    jp_serverapp: Any, jp_http_port: int, jp_base_url: str, jp_auth_header: dict[str, str], fake_backend: FakeFimServer,
    complete: Any
) -> None:
    # Under load a request can wait until after its browser gave up on it.
    body = json.dumps(notebook_request()).encode()
    head = (f"POST {jp_base_url}codestral/complete HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
            f"Authorization: {jp_auth_header['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(head + body)
        writer.close()  # sent, then gone at once
        await writer.wait_closed()
    await asyncio.sleep(0.5)
    assert fake_backend.request_count == 0 and the_app(jp_serverapp).service.stats.cancelled == 5
    code, reply = await complete(notebook_request())  # and the server serves on
    assert code == 200 and reply["completion"]


@pytest.mark.parametrize("codestral_config", [{"backend_connections": 2, "timeout": 1.0}])
async def test_abandoned_requests_under_pool_contention_leave_no_connection_behind(
    jp_serverapp: Any, server_url: str, jp_auth_header: dict[str, str], fake_backend: FakeFimServer, complete: Any,
    codestral_config: Any
) -> None:
    # More users than backend connections, each abandoning requests at any
    # moment (waiting for a connection, connecting, waiting for the answer).
    # A client that loses a pool slot for good when a request is cancelled
    # while its connection is being set up (httpx's httpcore 1.0.9 did:
    # encode/httpcore#1093) would, once the slots are gone, time out on
    # every completion.
    fake_backend.reset(delay_first=0.05)
    url = f"{server_url}/complete"
    rng = __import__("random").Random(3)

    async def typist(n: int, client: httpx.AsyncClient) -> None:
        for _ in range(25):
            task = asyncio.ensure_future(client.post(url, json=notebook_request(path=f"user-{n}.ipynb")))
            await asyncio.sleep(rng.uniform(0.0, 0.08))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers=jp_auth_header, limits=limits, timeout=10) as client:
        await asyncio.gather(*(typist(n, client) for n in range(12)))
    await asyncio.sleep(0.5)
    fake_backend.reset()
    for _ in range(4):  # more requests than the pool has slots, one after the other
        code, reply = await complete(notebook_request())
        assert code == 200, reply
    assert fake_backend.in_flight == 0


@pytest.mark.parametrize("codestral_config", [{"backend_connections": 1, "timeout": 1.0}])
async def test_when_every_backend_connection_stays_busy_the_user_is_told_so(
    complete: Any, fake_backend: FakeFimServer, codestral_config: Any
) -> None:
    fake_backend.reset(chunks=["a"] * 5, delay_between=0.5)  # 2.5 s, but never 1 s without a byte
    first = asyncio.ensure_future(complete(notebook_request(path="a.ipynb")))
    await asyncio.sleep(0.2)
    code, reply = await complete(notebook_request(path="b.ipynb"))
    assert code == 504 and "All 1 connections" in reply["error"]["message"]
    assert "backend_connections" in reply["error"]["message"]
    assert (await first)[0] == 200


async def test_the_status_says_what_the_backend_last_answered(complete: Any, jp_fetch: Any,
                                                             fake_backend: FakeFimServer) -> None:
    async def state() -> str:
        return str(json.loads((await jp_fetch("codestral", "status")).body)["state"])

    fake_backend.reset(status=401, error_body={"message": "Unauthorized"})
    await complete(notebook_request())
    assert await state() == "unauthorized"
    fake_backend.reset()
    await complete(notebook_request())
    assert await state() == "ready"
    fake_backend.reset(status=429, headers={"Retry-After": "1"}, error_body={"message": "slow down"})
    await complete(notebook_request())
    assert await state() == "rate_limited"
    await asyncio.sleep(1.1)  # the wait is over: the next request goes out, and succeeds
    fake_backend.reset()
    code, _ = await complete(notebook_request())
    assert code == 200 and await state() == "ready"
    await fake_backend.stop()
    await complete(notebook_request())
    assert await state() == "unreachable"


@pytest.mark.parametrize("codestral_config", [{"max_tokens": 64}], indirect=True)
async def test_the_servers_max_tokens_bounds_what_a_request_asks_for(
    complete: Any, fake_backend: FakeFimServer, codestral_config: Any, jp_fetch: Any
) -> None:
    for asked, sent in ((512, 64), (1024, 64), (16, 16), (None, 64)):
        body = notebook_request() if asked is None else notebook_request(max_tokens=asked)
        code, _ = await complete(body)
        assert code == 200 and fake_backend.last.body["max_tokens"] == sent, (asked, fake_backend.last.body)
    status = json.loads((await jp_fetch("codestral", "status")).body)
    assert status["max_tokens"] == 64


@pytest.mark.parametrize("codestral_config", [{"backend": "openai", "model": "qwen", "min_confidence": -1.0}],
                         indirect=True)
async def test_a_suggestion_the_model_is_unsure_of_is_not_shown(
    complete: Any, fake_backend: FakeFimServer, codestral_config: Any
) -> None:
    fake_backend.script.logprob = -0.2
    code, sure = await complete(notebook_request())
    assert code == 200 and sure["completion"] == "df.head()" and sure["confidence"] == -0.2
    fake_backend.script.logprob = -2.5
    code, lines = await complete(notebook_request(stream=True))
    done = lines[-1]
    assert code == 200 and done["completion"] == "" and done["cut"] == "confidence" and done["confidence"] == -2.5
    assert not any("delta" in line for line in lines)  # nothing of it reached the screen
