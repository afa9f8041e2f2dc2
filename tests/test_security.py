"""Authentication, XSRF, where requests may go, what is logged, per-user limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from conftest import notebook_request, the_app
from fake_backends import FakeFimServer

from jupyter_codestral.ratelimit import TokenBucket, UserRateLimiter


@asynccontextmanager
async def logged_in_browser(jp_serverapp: Any, jp_http_port: int, jp_base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding the session cookie a browser gets by logging in with the token."""
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        token = jp_serverapp.identity_provider.token
        login = await browser.get(f"http://127.0.0.1:{jp_http_port}{jp_base_url}?token={token}")
        assert login.status_code == 200 and browser.cookies.get("_xsrf")
        yield browser


async def test_a_post_with_only_the_session_cookie_is_refused(
    server_url: str, jp_base_url: str, jp_http_port: int, jp_serverapp: Any, fake_backend: FakeFimServer
) -> None:
    async with logged_in_browser(jp_serverapp, jp_http_port, jp_base_url) as browser:
        # A forged cross-site request carries the cookie but not the XSRF token.
        cross_site = await browser.post(f"{server_url}/complete", json=notebook_request(),
                                        headers={"Origin": "http://evil.example"})
        same_site = await browser.post(f"{server_url}/complete", json=notebook_request())
        assert cross_site.status_code in (403, 404) and same_site.status_code == 403
        assert "error" in same_site.json()
        assert fake_backend.requests == []
        # With the XSRF token from the cookie, as JupyterLab sends it, it works.
        xsrf = browser.cookies["_xsrf"]
        ok = await browser.post(f"{server_url}/complete", json=notebook_request(), headers={"X-XSRFToken": xsrf})
        assert ok.status_code == 200, ok.text
    assert len(fake_backend.requests) == 1


async def test_the_request_cannot_choose_the_backend_host(complete: Any, fake_backend: FakeFimServer) -> None:
    body = notebook_request(url="http://127.0.0.2:9/steal", base_url="http://127.0.0.2:9", backend="openai",
                            model="other", api_key="x")
    code, reply = await complete(body)
    assert code == 200 and reply["backend"] == "mistral" and reply["model"] == "codestral-latest"
    assert len(fake_backend.requests) == 1 and fake_backend.last.path == "/v1/fim/completions"


SECRET_CODE = "customer_ledger_7f3a = load_private()"


@contextmanager
def every_log(jp_serverapp: Any, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """What the server and the extension log, in ``caplog`` (the extension's logger does not propagate)."""
    caplog.set_level(logging.DEBUG)
    log = the_app(jp_serverapp).log
    log.addHandler(caplog.handler)
    try:
        yield
    finally:
        log.removeHandler(caplog.handler)


async def test_prompts_and_completions_are_not_logged_by_default(
    complete: Any, caplog: pytest.LogCaptureFixture, jp_serverapp: Any
) -> None:
    cells = [{"cell_type": "code", "source": SECRET_CODE}, {"cell_type": "code", "source": "x."}]
    with every_log(jp_serverapp, caplog):
        code, reply = await complete({"cells": cells, "cell_index": 1, "cursor": 2})
    assert code == 200 and reply["completion"] == "df.head()"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "customer_ledger_7f3a" not in logged and "df.head()" not in logged


@pytest.mark.parametrize("codestral_config", [{"log_prompts": True}], indirect=True)
async def test_log_prompts_logs_completions_for_debugging(
    complete: Any, codestral_config: Any, caplog: pytest.LogCaptureFixture, jp_serverapp: Any
) -> None:
    with every_log(jp_serverapp, caplog):
        code, _ = await complete(notebook_request())
    assert code == 200
    assert "df.head()" in "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("codestral_config", [{"user_rate_limit": 60.0, "user_rate_burst": 3}], indirect=True)
async def test_the_per_user_rate_limit(
    server_url: str, jp_base_url: str, jp_http_port: int, jp_serverapp: Any, codestral_config: Any,
    fake_backend: FakeFimServer,
) -> None:
    async with logged_in_browser(jp_serverapp, jp_http_port, jp_base_url) as browser:
        headers = {"X-XSRFToken": browser.cookies["_xsrf"]}
        codes = [(await browser.post(f"{server_url}/complete", json=notebook_request(), headers=headers)).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 200]
        refused = await browser.post(f"{server_url}/complete", json=notebook_request(), headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["kind"] == "user_rate_limited"
    assert 0 < refused.json()["error"]["retry_after"] <= 1.0 and refused.headers["Retry-After"] == "1"
    assert len(fake_backend.requests) == 3  # the refused request never reached the backend


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_minute=60, burst=2, updated=0.0)
    assert bucket.take(0.0) == 0 and bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.6) == 0


def test_the_hung_up_check_peeks_without_blocking_and_survives_tls() -> None:
    import socket
    import ssl

    from jupyter_codestral.hangup import peer_closed

    ours, theirs = socket.socketpair()
    try:
        assert not peer_closed(ours)  # open, nothing sent
        theirs.sendall(b"GET")
        assert not peer_closed(ours)  # data waiting: not gone (and not consumed)
        assert ours.recv(3) == b"GET"
        theirs.close()
        assert peer_closed(ours)
        # Jupyter served over HTTPS: TLS sockets refuse flags; the check must not fail the request.
        left, right = socket.socketpair()
        tls = ssl.create_default_context().wrap_socket(left, do_handshake_on_connect=False, server_hostname="x")
        assert not peer_closed(tls)
        tls.close()
        right.close()
    finally:
        ours.close()


def test_the_rate_limiter_forgets_users_whose_bucket_has_refilled() -> None:
    # One request per 10 s, bursts of 2; 3,000 passers-by over 150 s, one request each.
    limiter = UserRateLimiter(rate_per_minute=6, burst=2)
    sizes = []
    for n in range(3000):
        now = n * 0.05
        if n == 2600:  # a student empties their bucket at t = 130 s
            assert limiter.check("student", now=now) == 0 and limiter.check("student", now=now) == 0
        assert limiter.check(f"visitor-{n}", now=now) == 0
        sizes.append(len(limiter._buckets))
    assert max(sizes) <= 1024  # refilled buckets were forgotten, memory stays bounded
    assert any(b < a for a, b in zip(sizes[2600:], sizes[2601:]))  # ... also after the student's requests
    # The student's bucket was not refilled, so it was kept: still limited exactly as before.
    assert "student" in limiter._buckets
    assert limiter.check("student", now=131.0) == pytest.approx(9.0)
