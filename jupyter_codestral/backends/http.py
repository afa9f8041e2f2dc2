"""Backends on the other side of an HTTP connection: retries, readable errors, their real state."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from .. import jsonio
from ..errors import BackendError, ErrorKind, backend_error
from ..templates import FimTemplate
from .base import Backend, BackendItem, BackendSettings, BackendState, FimRequest
from .event_streams import choice_stream, error_detail

RETRIED_STATUS = frozenset({500, 502, 503, 504})
RETRY_WAIT_MAX_S = 2.0  # the longest wait between two attempts
# What a failure says about the backend, for codestral/status (other failures leave it as it was).
STATE_AFTER = {
    ErrorKind.AUTH: BackendState.UNAUTHORIZED,
    ErrorKind.RATE_LIMITED: BackendState.RATE_LIMITED,
    ErrorKind.UNREACHABLE: BackendState.UNREACHABLE,
    ErrorKind.SERVER_ERROR: BackendState.FAILING,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retryable(error: BaseException) -> bool:
    return isinstance(error, BackendError) and error.retryable


class NotAnEventStream(Exception):
    """The server answered 200 with something other than the stream it was asked for."""


class HttpBackend(Backend):
    """A backend on the other side of an HTTP connection.

    One aiohttp session per backend, opened on first use (on the server's event loop): its pool keeps
    connections alive between keystrokes, and cancelling a request (a newer keystroke) closes its
    connection, which is how the backend learns that nobody wants the rest."""

    path = ""
    chat_path = "/v1/chat/completions"  # where edits go (the OpenAI-style chat API, unless a backend says)
    host_label = "The completion server"
    content_type = "text/event-stream"  # what a streaming answer must be

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        # What every request carries: each posts JSON, and the key where there is one.
        self.headers = {"Content-Type": "application/json"}
        if settings.api_key:
            self.headers["Authorization"] = f"Bearer {settings.api_key}"
        # Requests wait for a connection here, where the wait has a readable timeout of its own.
        self.connection_slots = asyncio.Semaphore(settings.max_connections)
        self.template: FimTemplate = settings.prompt.template_for(settings.model)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.settings.url.rstrip("/") + "/",
                headers=self.headers,
                # sock_read: the first byte, or the next chunk; no limit on the whole stream.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.settings.connect_timeout, sock_read=self.settings.timeout
                ),
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=60),
                trust_env=False,  # the backend URL comes from configuration only, never a proxy variable
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def raw_prompt(self, request: FimRequest) -> str:
        return self.settings.prompt.render(self.template, request.context)

    def stop_sequences(self, request: FimRequest) -> list[str]:
        return list(dict.fromkeys([*self.template.stop, *request.stop]))

    # -- errors -----------------------------------------------------------
    def auth_message(self, status: int, detail: str) -> str:
        return f"{self.host_label} at {self.settings.url} refused the request ({status}): {detail}"

    def status_error(self, status: int, body: bytes, headers: CIMultiDictProxy[str], path: str) -> BackendError:
        detail = self.settings.redact(error_detail(body)) or "no details"
        if status in (401, 403):
            return backend_error(ErrorKind.AUTH, self.auth_message(status, detail))
        if status == 429:
            wait = parse_retry_after(headers.get("retry-after"))
            until = f" for {wait:.0f} s" if wait is not None else ""
            return backend_error(ErrorKind.RATE_LIMITED, f"Rate limited by {self.settings.url}{until}: {detail}", wait)
        if status == 404:
            return backend_error(
                ErrorKind.REJECTED,
                f"{self.settings.url}{path} was not found (404): is this a {self.name} server?",
            )
        if status < 500:
            return backend_error(ErrorKind.REJECTED, f"{self.host_label} rejected the request ({status}): {detail}")
        return backend_error(
            ErrorKind.SERVER_ERROR, f"{self.host_label} failed ({status}): {detail}", retryable=status in RETRIED_STATUS
        )

    def transport_error(self, exc: Exception) -> BackendError:
        url = self.settings.url
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return backend_error(
                ErrorKind.UNREACHABLE, f"Could not connect to {url} within {self.settings.connect_timeout:g} s."
            )
        if isinstance(exc, TimeoutError):  # aiohttp's read timeout is one too
            return backend_error(ErrorKind.TIMEOUT, f"{url} sent nothing for {self.settings.timeout:g} s.")
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = self.settings.redact(str(exc.os_error) if exc.os_error else str(exc)) or "connection refused"
            return backend_error(ErrorKind.UNREACHABLE, f"Cannot reach {url}: {reason}.")
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
            return backend_error(
                ErrorKind.BAD_REPLY, f"{url} closed the connection before the completion was finished."
            )
        if isinstance(exc, NotAnEventStream):
            return backend_error(ErrorKind.BAD_REPLY, f"{url} did not answer with an event stream: {exc}")
        return backend_error(ErrorKind.BAD_REPLY, f"{url}: {self.settings.redact(str(exc))}")

    def _failed(self, error: BackendError) -> BackendError:
        """Note what the failure says about the backend's state; return it to be raised."""
        self.state = STATE_AFTER.get(error.kind, self.state)
        if error.kind == ErrorKind.RATE_LIMITED and error.retry_after is not None:
            self.rate_limited_until = time.time() + error.retry_after
        return error

    # -- the request ------------------------------------------------------
    def _check_rate_limit(self) -> None:
        if self.rate_limited_until is not None:
            wait = self.rate_limited_until - time.time()
            if wait > 0:
                raise backend_error(
                    ErrorKind.RATE_LIMITED,
                    f"Rate limited by {self.settings.url}; the next request may be sent in {wait:.0f} s.",
                    wait,
                )
            self.rate_limited_until = None
            self.state = BackendState.READY

    async def _attempt(self, payload: dict[str, Any], path: str) -> aiohttp.ClientResponse:
        """One POST; the streaming response, or the backend's error."""
        try:
            response = await self.session.post(path.lstrip("/"), data=jsonio.dumps(payload))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._failed(self.transport_error(exc)) from None
        if response.status >= 400:
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            response.release()
            raise self._failed(self.status_error(response.status, body, response.headers, path))
        if self.content_type not in response.headers.get("Content-Type", self.content_type):
            response.close()
            error = NotAnEventStream(f"its Content-Type is {response.headers.get('Content-Type')!r}")
            raise self._failed(self.transport_error(error))
        self.state = BackendState.READY
        return response

    async def _open(self, payload: dict[str, Any], path: str) -> aiohttp.ClientResponse:
        """POST and return the streaming response, retrying 5xx before any text."""
        self._check_rate_limit()
        # The first attempt goes without tenacity: its retry state is a reference cycle, garbage
        # that only the cyclic collector frees, a cost on every keystroke for a rare failure.
        try:
            return await self._attempt(payload, path)
        except BackendError as error:
            if not _retryable(error) or self.settings.retries < 1:
                raise
        backoff = self.settings.retry_backoff
        await asyncio.sleep(min(backoff, RETRY_WAIT_MAX_S))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries),
            # 2, 4, 8... times backoff: the waits continue from the one above.
            wait=wait_exponential(multiplier=2 * backoff, max=RETRY_WAIT_MAX_S),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        response: aiohttp.ClientResponse = await retrying(self._attempt, payload, path)
        return response

    def payload(self, request: FimRequest) -> dict[str, Any]:
        """The JSON body of the backend's streaming request for ``request``."""
        raise NotImplementedError

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        """The completion's pieces from the backend's streaming response, then the tokens it used."""
        raise NotImplementedError

    def chat_payload(self, request: FimRequest) -> dict[str, Any]:
        """The JSON body of the backend's streaming chat request for an edit (OpenAI's chat API)."""
        return {
            "model": self.settings.model,
            "messages": [message.to_json() for message in request.chat],
            "max_tokens": request.max_tokens,
            "temperature": self.settings.temperature,
            "stream": True,
        }

    def chat_events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        """The answer's pieces from a streaming chat response (OpenAI's chat chunks: ``delta.content``)."""
        return choice_stream(response, self.settings.url, self.host_label, "delta", "content")

    def stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return self._exchange(request, self.path, self.payload, self.events)

    def chat_stream(self, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return self._exchange(request, self.chat_path, self.chat_payload, self.chat_events)

    async def _exchange(
        self,
        request: FimRequest,
        path: str,
        payload_of: Callable[[FimRequest], dict[str, Any]],
        events_of: Callable[[aiohttp.ClientResponse, FimRequest], AsyncGenerator[BackendItem, None]],
    ) -> AsyncGenerator[BackendItem, None]:
        """One streaming POST to ``path``: the pieces ``events_of`` reads from the response."""
        payload = payload_of(request)
        try:
            if self.connection_slots.locked():  # (a timer per keystroke only when it may be needed)
                async with asyncio.timeout(self.settings.timeout):
                    await self.connection_slots.acquire()
            else:
                await self.connection_slots.acquire()
        except TimeoutError:
            raise backend_error(
                ErrorKind.TIMEOUT,
                f"All {self.settings.max_connections} connections to {self.settings.url} stayed busy "
                f"for {self.settings.timeout:g} s (CodestralExtension.backend_connections).",
            ) from None
        try:
            response = await self._open(payload, path)
            finished = False
            try:
                # Closed here, not left to the garbage collector (whose finalizer wakes the event
                # loop from outside once per request).
                async with aclosing(events_of(response, request)) as pieces:
                    async for piece in pieces:
                        yield piece
                finished = True
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: an endless line
                raise self._failed(self.transport_error(exc)) from None
            finally:
                if finished:
                    response.release()  # read to its end: the connection goes back to the pool
                else:
                    response.close()  # dropping the connection tells the backend to stop
        finally:
            self.connection_slots.release()
