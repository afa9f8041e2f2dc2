"""The one interface every completion backend implements, and the HTTP plumbing they share."""

from __future__ import annotations

import abc
import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..context import FimContext
from ..errors import BackendError, backend_error
from ..templates import FimTemplate, render_prompt, template_for_model

RETRIED_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class BackendSettings:
    backend: str
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    key_name: str | None = None  # the variable or setting the key came from, for messages
    template: str | None = None
    layout: str = "inline"
    temperature: float = 0.0
    max_tokens: int = 128
    timeout: float = 10.0  # seconds to wait for the first byte, or between chunks
    connect_timeout: float = 3.0
    retries: int = 2  # extra attempts on 5xx before any text arrived
    retry_backoff: float = 0.2
    max_connections: int = 100  # HTTP backends: the connection pool's size
    openai_suffix: bool = False  # the OpenAI-compatible server accepts "suffix"
    model_path: str | None = None  # local backend: a GGUF file instead of the bundled model
    threads: int | None = None  # local backend
    kv_cache: bool = True  # local backend: reuse the prompt cache across requests
    kernel_file: bool = False  # split layout: the kernel summary as a file of its own

    def redact(self, text: str) -> str:
        """Remove the key from any text that might reach a user or a log."""
        return text.replace(self.api_key, "[key hidden]") if self.api_key else text


@dataclass(frozen=True)
class FimRequest:
    context: FimContext
    max_tokens: int
    stop: tuple[str, ...] = ()
    prefetch: bool = False  # only read the prompt into the backend's cache; no text wanted

    @property
    def prefix(self) -> str:
        return self.context.prefix

    @property
    def suffix(self) -> str:
        return self.context.suffix


class Backend(abc.ABC):
    """Streams the text a model writes between a prefix and a suffix."""

    name: str = ""
    # Whether a prefetch warms a prompt cache (else prefetches are answered at once, unsent).
    supports_prefetch = False

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.state = "ready"
        self.rate_limited_until: float | None = None  # wall-clock seconds

    @abc.abstractmethod
    def stream(self, request: FimRequest) -> AsyncIterator[str]:
        """Yield pieces of the completion as they arrive; raise :class:`BackendError`."""

    async def start(self) -> None:
        """Begin any slow preparation (model loading) without waiting for it."""

    async def aclose(self) -> None:
        """Release connections and processes."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.settings.model, "base_url": self.settings.url}


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


def error_detail(body: bytes) -> str:
    """The human part of an error body (Mistral, OpenAI, FastAPI/422, Ollama, llama.cpp shapes)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300]
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict):
            data = data["error"]
        for key in ("message", "error", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value[:300]
            if isinstance(value, list) and value:
                first = value[0]
                if isinstance(first, dict):
                    where = ".".join(str(p) for p in first.get("loc", []))
                    return f"{first.get('msg', first)}{f' ({where})' if where else ''}"[:300]
                return str(first)[:300]
    return str(data)[:300]


class HttpBackend(Backend):
    """A backend on the other side of an HTTP connection, with retries and clear errors."""

    path = ""
    host_label = "The completion server"

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        timeout = httpx.Timeout(settings.timeout, connect=settings.connect_timeout)
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=20),
            trust_env=False,  # the backend URL comes from configuration only, never a proxy variable
        )
        self.connection_slots = asyncio.Semaphore(settings.max_connections)
        self.template: FimTemplate = template_for_model(settings.model, settings.template)

    async def aclose(self) -> None:
        await self.client.aclose()

    def raw_prompt(self, request: FimRequest) -> str:
        return render_prompt(self.template, request.context, self.settings.layout, self.settings.kernel_file)

    def stop_sequences(self, request: FimRequest) -> list[str]:
        return list(dict.fromkeys([*self.template.stop, *request.stop]))

    # -- errors -----------------------------------------------------------
    def auth_message(self, status: int, detail: str) -> str:
        return f"{self.host_label} at {self.settings.url} refused the request ({status}): {detail}"

    def status_error(self, status: int, body: bytes, headers: httpx.Headers) -> BackendError:
        detail = self.settings.redact(error_detail(body)) or "no details"
        if status in (401, 403):
            return backend_error("auth", self.auth_message(status, detail))
        if status == 429:
            wait = parse_retry_after(headers.get("retry-after"))
            until = f" for {wait:.0f} s" if wait is not None else ""
            return backend_error("rate_limited", f"Rate limited by {self.settings.url}{until}: {detail}", wait)
        if status == 404:
            return backend_error(
                "rejected", f"{self.settings.url}{self.path} was not found (404): is this a {self.name} server?"
            )
        if status < 500:
            return backend_error("rejected", f"{self.host_label} rejected the request ({status}): {detail}")
        return backend_error("server_error", f"{self.host_label} failed ({status}): {detail}")

    def transport_error(self, exc: Exception) -> BackendError:
        url = self.settings.url
        if isinstance(exc, httpx.ConnectTimeout):
            return backend_error("unreachable", f"Could not connect to {url} within {self.settings.connect_timeout:g} s.")
        if isinstance(exc, httpx.TimeoutException):
            return backend_error("timeout", f"{url} sent nothing for {self.settings.timeout:g} s.")
        if isinstance(exc, httpx.ConnectError):
            return backend_error("unreachable", f"Cannot reach {url}: {self.settings.redact(str(exc)) or 'connection refused'}.")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return backend_error("bad_reply", f"{url} closed the connection before the completion was finished.")
        if isinstance(exc, SSEError):
            return backend_error("bad_reply", f"{url} did not answer with an event stream: {exc}")
        return backend_error("bad_reply", f"{url}: {self.settings.redact(str(exc))}")

    # -- the request ------------------------------------------------------
    def _check_rate_limit(self) -> None:
        if self.rate_limited_until is not None:
            wait = self.rate_limited_until - time.time()
            if wait > 0:
                raise backend_error(
                    "rate_limited",
                    f"Rate limited by {self.settings.url}; the next request may be sent in {wait:.0f} s.",
                    wait,
                )
            self.rate_limited_until = None

    async def _open(self, payload: dict[str, Any], slot: _PoolSlot) -> httpx.Response:
        """POST and return the streaming response, retrying 5xx before any text."""
        self._check_rate_limit()

        def retried(exc: BaseException) -> bool:
            return isinstance(exc, _RetryableStatus)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=wait_exponential(multiplier=self.settings.retry_backoff, max=2.0),
            retry=retry_if_exception(retried),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    request = self.client.build_request("POST", self.path, json=payload)
                    response = await self._send(request, slot)
                    if response.status_code >= 400:
                        body = await response.aread()
                        await response.aclose()
                        error = self.status_error(response.status_code, body, response.headers)
                        if error.kind == "rate_limited" and error.retry_after is not None:
                            self.rate_limited_until = time.time() + error.retry_after
                        if response.status_code in RETRIED_STATUS:
                            raise _RetryableStatus(error)
                        raise error
                    return response
        except _RetryableStatus as wrapped:
            raise wrapped.error from None
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, request: httpx.Request, slot: _PoolSlot) -> httpx.Response:
        """``client.send``, but a cancellation only lands once the request is on the wire.

        httpcore 1.0.9 leaks a pool slot for good when a request is cancelled
        while it waits for, or sets up, a connection (encode/httpcore#1093);
        keystrokes cancel requests all the time, and once the slots are gone
        every completion times out.  So requests queue in our own semaphore
        (``slot``), never in httpcore's pool, and the send runs in a task of
        its own: a cancellation that arrives before the request was sent is
        held back until httpcore starts waiting for the answer, where
        cancelling just closes the connection (which tells the backend to
        stop).  The slot stays taken until then.
        """
        abandoned = on_the_wire = False
        sending: asyncio.Task[httpx.Response]

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal on_the_wire
            if event == "http11.receive_response_headers.started":
                on_the_wire = True
                if abandoned:
                    sending.cancel()

        request.extensions["trace"] = trace
        sending = asyncio.ensure_future(self.client.send(request, stream=True))
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            abandoned = True
            if on_the_wire:
                sending.cancel()
            release = slot.hand_over()
            sending.add_done_callback(lambda task: _close_unwanted(task, release))
            raise

    async def post_stream(
        self, payload: dict[str, Any], events: Callable[[httpx.Response], AsyncIterator[str]]
    ) -> AsyncIterator[str]:
        slot = _PoolSlot(self.connection_slots)
        try:
            async with asyncio.timeout(self.settings.timeout):
                await slot.take()  # waiting here, unlike in httpcore's pool, is safe to cancel
        except TimeoutError:
            raise backend_error(
                "timeout", f"All {self.settings.max_connections} connections to {self.settings.url} stayed busy "
                f"for {self.settings.timeout:g} s (CodestralExtension.backend_connections)."
            ) from None
        async with slot:
            response = await self._open(payload, slot)
            try:
                async for piece in events(response):
                    yield piece
            except (httpx.HTTPError, SSEError) as exc:
                raise self.transport_error(exc) from None
            finally:
                # Closing an unfinished response drops the connection, which is
                # how the backend learns that nobody wants the rest.
                await response.aclose()

    def malformed(self, what: str) -> BackendError:
        return backend_error("bad_reply", f"{self.settings.url} sent a malformed event: {what[:200]}")

    async def sse_json(self, response: httpx.Response) -> AsyncIterator[dict[str, Any] | None]:
        """Each SSE data payload as JSON; ``None`` for the ``[DONE]`` sentinel."""
        events = EventSource(response).aiter_sse()
        async for event in events:
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                await drain(events)
                yield None
                return
            try:
                payload = json.loads(data)
            except ValueError:
                raise self.malformed(data) from None
            if not isinstance(payload, dict):
                raise self.malformed(data)
            if "error" in payload:
                raise backend_error("server_error", f"{self.host_label} reported: {error_detail(data.encode())}")
            yield payload


class _PoolSlot:
    """One of the backend's connections, held from the request until its reply is closed."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.held = False

    async def take(self) -> None:
        await self.slots.acquire()
        self.held = True

    async def __aenter__(self) -> _PoolSlot:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    def hand_over(self) -> Callable[[], None]:
        """Leave the release to whoever finishes the request in the background."""
        self.held = False
        return self.slots.release


def _close_unwanted(sending: asyncio.Task[httpx.Response], release: Callable[[], None]) -> None:
    """A reply nobody waits for any more: close it, then free its slot."""
    if sending.cancelled() or sending.exception() is not None:
        release()
        return

    async def close() -> None:
        try:
            await sending.result().aclose()
        finally:
            release()

    asyncio.ensure_future(close())


async def drain(rest: AsyncIterator[Any]) -> None:
    """Read a finished stream to its end, so its connection returns to the pool
    rather than being closed (a new connection per keystroke costs ~1 ms)."""
    async for _ in rest:
        pass


async def choice_stream(backend: HttpBackend, response: httpx.Response, *path: str) -> AsyncIterator[str]:
    """The text of ``choices[0][path...]`` from each event of an OpenAI-style stream ending in ``[DONE]``."""
    async for event in backend.sse_json(response):
        if event is None:
            return
        yield choice_text(event, *path)
    raise backend_error("bad_reply", f"{backend.settings.url} ended the stream before [DONE].")


class _RetryableStatus(Exception):
    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error


def choice_text(payload: dict[str, Any], *path: str) -> str:
    """``payload["choices"][0][path...]`` as a string, or a malformed-reply error."""
    try:
        node: Any = payload["choices"][0]
        for key in path:
            node = node[key]
    except (KeyError, IndexError, TypeError):
        raise backend_error("bad_reply", f"Unexpected event shape: {json.dumps(payload)[:200]}") from None
    return node or ""
