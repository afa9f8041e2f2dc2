"""HTTP endpoints: ``POST codestral/complete`` and ``GET codestral/status``."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError

from .errors import CompletionError, RequestError
from .pipeline import run_completion
from .request import CompletionRequest, parse_completion_request

if TYPE_CHECKING:
    from .app import CodestralExtension

NDJSON = "application/x-ndjson"


def peer_closed(sock: socket.socket | None) -> bool:
    """True if the other end has closed ``sock`` and sent nothing more (a non-blocking peek)."""
    if sock is None:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing more sent yet
    except ValueError:
        return False  # TLS sockets cannot peek at raw bytes: assume it is still there
    except OSError:
        return True


class CodestralHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = "codestral"

    @property
    def codestral(self) -> CodestralExtension:
        return self.extensionapp  # type: ignore[return-value]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Our own errors are written by send_error_json; anything else
        # (tornado's 403 for a missing XSRF token, say) gets the same shape
        # and never a traceback.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        kind = "forbidden" if status_code == 403 else "http_error"
        if status_code >= 500:
            kind, message = "internal", "The completion server failed; see the Jupyter server log."
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"kind": kind, "message": message}}))

    def send_error_json(self, error: CompletionError) -> None:
        self.set_status(error.status)
        if error.retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(error.retry_after))))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.to_json()))


class CompleteHandler(CodestralHandler):
    _work: asyncio.Task[None] | None = None
    _superseded = False
    _streaming = False

    @web.authenticated
    @authorized
    async def post(self) -> None:
        app = self.codestral
        body = self.request.body or b""
        try:
            if len(body) > app.max_body_bytes:
                raise RequestError(
                    "too_large",
                    f"The request is {len(body)} bytes; the limit is {app.max_body_bytes} "
                    "(CodestralExtension.max_body_bytes).",
                    413,
                )
            request = parse_completion_request(body, app.request_limits)
            if app.config_error:
                raise CompletionError("config", app.config_error, 503)
            wait = app.rate_limiter.check(self.current_user.username)
            if wait > 0:
                raise CompletionError(
                    "user_rate_limited",
                    f"You have sent too many completion requests; try again in {math.ceil(wait)} s.",
                    429,
                    wait,
                )
        except CompletionError as error:
            self.send_error_json(error)
            return
        if self._client_gone():
            # Under load a request can wait until after its browser gave up on
            # it: it must neither cost a backend call nor supersede the newer
            # request that the server happened to take up first.
            app.stats.cancelled += 1
            return
        # Newest wins per user and document: a keystroke supersedes the request
        # in flight at once, even when the browser's abort of the old one is
        # late or lost on the way (proxies do not always pass a closed
        # connection on).  Prefetches only warm a cache and never supersede.
        document = None if request.prefetch or request.path is None else (self.current_user.username, request.path)
        if document is not None:
            older = app.in_flight.get(document)
            if older is not None:
                older.supersede()
            app.in_flight[document] = self
        self._work = asyncio.ensure_future(self._respond(request))
        try:
            await self._work
        except asyncio.CancelledError:
            app.stats.cancelled += 1
            if self._superseded:
                self._answer_superseded()
            else:
                self.log.debug("codestral: the client went away; backend request cancelled")
        finally:
            if document is not None and app.in_flight.get(document) is self:
                del app.in_flight[document]

    def supersede(self) -> None:
        self._superseded = True
        self._stop_work()

    def _answer_superseded(self) -> None:
        if not self._client_gone():
            replaced = "A newer request for this document replaced this one."
            self._send_failure(CompletionError("cancelled", replaced, 409))

    def on_connection_close(self) -> None:
        # The browser aborted (a newer keystroke) or closed: stop paying for tokens.
        self._stop_work()

    def _stop_work(self) -> None:
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def _send_failure(self, error: CompletionError) -> None:
        """The error as the last line of a stream already under way, else as the whole reply."""
        if self._streaming:
            self.finish(json.dumps(error.to_json()) + "\n")
        else:
            self.send_error_json(error)

    def _client_gone(self) -> bool:
        """Whether the browser has already hung up, checked without waiting."""
        stream = getattr(self.request.connection, "stream", None)
        if stream is None:
            return False
        return bool(stream.closed()) or peer_closed(stream.socket)

    async def _respond(self, request: CompletionRequest) -> None:
        app = self.codestral
        namespace = ""
        if request.kernel_id and app.kernel_namespace is not None:
            namespace = await app.kernel_namespace.summary(request.kernel_id)
            if self._client_gone():  # it left while the kernel was asked
                raise asyncio.CancelledError()
        events = run_completion(
            request,
            app.completion_backend,
            app.budget,
            max_tokens=app.backend_settings.max_tokens,
            namespace=namespace,
        )
        try:
            async for event in events:
                if "done" in event:
                    app.stats.record(event["timings"])
                    if app.log_prompts:
                        self.log.info("codestral completion: %r", event["completion"])
                    if not request.stream:
                        self.finish(
                            {"completion": event["completion"], **app.completion_backend.describe(), "timings": event["timings"]}
                        )
                        return
                if request.stream:
                    if not self._streaming:
                        self.set_header("Content-Type", NDJSON)
                        self.set_header("Cache-Control", "no-store")
                        self.set_header("X-Accel-Buffering", "no")  # proxies must not buffer the stream
                        self._streaming = True
                    self.write(json.dumps(event) + "\n")
                    await self.flush()
            if request.stream:
                self.finish()
        except StreamClosedError:
            raise asyncio.CancelledError() from None
        except CompletionError as error:
            if error.kind == "cancelled":
                app.stats.cancelled += 1  # superseded by a newer keystroke: not a failure
            else:
                app.stats.record_error(error)
                self.log.warning("codestral: %s", app.backend_settings.redact(str(error)))
            self._send_failure(error)
        finally:
            await events.aclose()


class StatusHandler(CodestralHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.codestral.status())
