"""HTTP endpoints: ``POST codestral/complete``, ``POST codestral/edit``, ``POST codestral/acceptance`` and
``GET codestral/status``.

Thin adapters over :class:`~jupyter_codestral.service.CompletionService`:
parse, call the service, write NDJSON or JSON, map errors to statuses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from . import jsonio
from .edit_request import EditRequest
from .errors import CompletionError, ErrorKind
from .hangup import client_gone
from .request import CompletionRequest
from .service import Completion, CompletionService, Event

NDJSON = "application/x-ndjson"
CLIENT_LEFT = CompletionError(ErrorKind.CANCELLED, "The client went away.", 499)


class CodestralHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = "codestral"

    @property
    def service(self) -> CompletionService:
        return self.settings["codestral_service"]  # type: ignore[no-any-return]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors (a 403 for a missing XSRF token, say) get our
        # shape too, and never a traceback.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        kind = ErrorKind.FORBIDDEN if status_code == 403 else ErrorKind.HTTP_ERROR
        if status_code >= 500:
            kind, message = ErrorKind.INTERNAL, "The completion server failed; see the Jupyter server log."
        self.send_json(status_code, CompletionError(kind, message, status_code).to_json())

    def send_json(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.set_status(status)
        if retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(retry_after))))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class CompleteHandler(CodestralHandler):
    _completion: Completion | None = None
    _streaming = False  # the reply's first line has been written
    _flush_due = False
    _ended = False  # the last line has been written: finish() sends the rest

    @web.authenticated
    @authorized
    async def post(self) -> None:
        user = self.current_user.username
        try:
            request = self.parse(self.request.body or b"", user)
        except CompletionError as error:
            self.send_json(error.status, error.to_json(), error.retry_after)
            return
        if client_gone(self.request):
            self.service.dropped()  # it must neither cost a backend call nor replace a newer request
            return
        sink = self._streamed if request.stream else self._whole
        self._completion = completion = self.serve(request, user, sink)
        try:
            await completion.wait()
            if request.stream:
                # (APIHandler.finish would otherwise label a stream still unsent as JSON.)
                self.finish(set_content_type=NDJSON)
        except CompletionError as error:
            if client_gone(self.request):
                return
            if self._streaming:  # the error is the stream's last line
                self.finish(jsonio.dumps(error.to_json()) + b"\n", set_content_type=NDJSON)
            else:
                self.send_json(error.status, error.to_json(), error.retry_after)
        finally:
            # The completion's task holds the handler (Jupyter keeps it in the task's context):
            # let go of it, or each request is a reference cycle for the garbage collector.
            self._completion = None

    def parse(self, body: bytes, user: str) -> CompletionRequest | EditRequest:
        return self.service.parse(body, user)

    def serve(self, request: Any, user: str, sink: Callable[[Event], None]) -> Completion:
        return self.service.serve(request, user, sink)

    def _streamed(self, event: Event) -> None:
        """Sends one event of a streamed reply, as an NDJSON line."""
        if not self._streaming:
            self._streaming = True
            self.set_header("Content-Type", NDJSON)
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Accel-Buffering", "no")  # proxies must not buffer the stream
        self.write(jsonio.dumps(event) + b"\n")
        # Events that arrive together go out in one write, and a reply whose events all
        # arrived together goes out whole with finish(): one send, with a Content-Length.
        if "done" in event:
            self._ended = True
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        if not self._finished and not self._ended:
            self.flush()  # (a write to a client that left fails quietly; on_connection_close stops the work)

    def _whole(self, event: Event) -> None:
        """Answers with the done event alone, as JSON."""
        if "done" in event:
            self.finish({k: v for k, v in event.items() if k != "done"})

    def on_connection_close(self) -> None:
        # The browser aborted (a newer keystroke) or closed: stop paying for tokens.
        if self._completion is not None:
            self._completion.stop(CLIENT_LEFT)


class EditHandler(CompleteHandler):
    """``POST codestral/edit``: rewrite, fix or document a range of a cell, streamed as a completion is."""

    def parse(self, body: bytes, user: str) -> CompletionRequest | EditRequest:
        return self.service.parse_edit(body, user)

    def serve(self, request: Any, user: str, sink: Callable[[Event], None]) -> Completion:
        return self.service.serve_edit(request, user, sink)


class AcceptanceHandler(CodestralHandler):
    """What the browser counted of the suggestions it showed (accepted, dismissed...): kept in the usage table."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            self.service.record_acceptance(self.request.body or b"")
        except CompletionError as error:
            self.send_json(error.status, error.to_json(), error.retry_after)
            return
        self.set_status(204)
        self.finish()


class StatusHandler(CodestralHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.service.status(self.get_argument("path", None)))
