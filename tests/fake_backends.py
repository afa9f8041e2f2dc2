"""A loopback server that speaks the wire formats of the real FIM backends.

One tornado app answers Mistral's ``/v1/fim/completions``, OpenAI-compatible
``/v1/completions``, Ollama's ``/api/generate`` and llama.cpp's ``/infill``, and for edits the chat
APIs (``/v1/chat/completions``, Ollama's ``/api/chat``),
with their documented stream shapes and error bodies.  A :class:`Script`
says what the next answers look like (text, status, delays, a cut-off or
malformed stream), and every request and disconnect is recorded, so tests can
check exactly what reached the backend.

It is used by the tests and by the benchmarks, and can run on its own:
``python tests/fake_backends.py --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.iostream import StreamClosedError

FAKE_KEY = "sk-test-0123456789abcdef-SECRET"


@dataclass
class Script:
    """What the next answers look like."""

    chunks: list[str] = field(default_factory=lambda: ["df", ".head", "()"])
    status: int = 200
    error_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_first: float = 0.0  # seconds before the response starts
    delay_between: float = 0.0  # seconds between chunks
    cut_after: int | None = None  # drop the connection after this many chunks
    malformed_after: int | None = None  # send a broken event after this many chunks
    omit_done: bool = False  # end the stream without its final marker
    fail_times: int | None = None  # answer `status` this many times, then succeed
    report_usage: bool = True  # end with the tokens used, in the wire format's own fields
    one_write: bool = False  # send every event in one write (tokens that arrive together)
    raw_body: bytes | None = None  # answer 200 with exactly these bytes (a broken stream)
    logprob: float = -0.25  # each chunk's log-probability, where the request asks for them


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


class FakeFimServer:
    def __init__(self, key: str | None = FAKE_KEY, keep_requests: bool = True) -> None:
        self.key = key
        self.keep_requests = keep_requests
        self.request_count = 0
        self.script = Script()
        self.requests: list[Received] = []
        self.disconnects = 0
        self.finished = 0
        self.in_flight = 0
        self.reported: list[tuple[int, int]] = []  # (prompt, completion) tokens, as reported
        self._server: tornado.httpserver.HTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> None:
        """Listen on loopback; call with an asyncio loop current."""
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        app = tornado.web.Application(
            [
                (r"/v1/fim/completions", MistralHandler, {"fake": self}),
                (r"/v1/completions", OpenAIHandler, {"fake": self}),
                (r"/api/generate", OllamaHandler, {"fake": self}),
                (r"/infill", InfillHandler, {"fake": self}),
                (r"/v1/chat/completions", ChatHandler, {"fake": self}),
                (r"/api/chat", OllamaChatHandler, {"fake": self}),
                (r"/_stats", StatsHandler, {"fake": self}),
            ]
        )
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()

    def reset(self, **script: Any) -> None:
        self.script = Script(**script)
        self.requests.clear()
        self.reported.clear()
        self.disconnects = self.finished = 0

    @property
    def last(self) -> Received:
        return self.requests[-1]


def apply_stop(text: str, stop: Any) -> str:
    """Cut ``text`` at the first stop string, as real servers do."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


class FakeHandler(tornado.web.RequestHandler):
    fake: FakeFimServer
    auth_required = False
    stop_field = "stop"

    def initialize(self, fake: FakeFimServer) -> None:
        self.fake = fake
        self._closed = False
        self._gone = asyncio.Event()
        self.usage: tuple[int, int] | None = None

    def on_connection_close(self) -> None:
        if not self._closed:
            self._closed = True
            self._gone.set()
            self.fake.disconnects += 1

    # -- protocol specifics ----------------------------------------------
    def validation_error(self, body: dict[str, Any]) -> Any | None:
        return None

    def event(self, text: str, last: bool) -> bytes:
        raise NotImplementedError

    def done(self) -> bytes:
        return b""

    def usage_event(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The event that reports the tokens used (empty: this format reports them in done())."""
        return b""

    def error_json(self, status: int) -> Any:
        return {"object": "error", "message": f"status {status}", "type": "api_error", "param": None, "code": None}

    def stop_of(self, body: dict[str, Any]) -> Any:
        return body.get(self.stop_field)

    content_type = "text/event-stream"

    # -- the request -----------------------------------------------------
    async def post(self) -> None:
        fake, script = self.fake, self.fake.script
        try:
            body = json.loads(self.request.body)
        except ValueError:
            body = {"_raw": self.request.body.decode("utf-8", "replace")}
        fake.request_count += 1
        if fake.keep_requests:
            fake.requests.append(Received(self.request.path, body, dict(self.request.headers), time.time()))
        fake.in_flight += 1
        try:
            await self._answer(body, script)
        except StreamClosedError:
            self.on_connection_close()  # noticed by a write before tornado's close callback ran
        finally:
            fake.in_flight -= 1

    async def _answer(self, body: dict[str, Any], script: Script) -> None:
        fake = self.fake
        if self.auth_required and fake.key is not None:
            if self.request.headers.get("Authorization") != f"Bearer {fake.key}":
                self.set_status(401)
                self.finish({"message": "Unauthorized", "request_id": "fake"})
                return
        invalid = self.validation_error(body)
        if invalid is not None:
            self.set_status(422)
            self.finish(invalid)
            return
        if script.delay_first:
            await self._sleep(script.delay_first)
            if self._closed:
                return
        if script.status != 200 and (script.fail_times is None or script.fail_times > 0):
            if script.fail_times is not None:
                script.fail_times -= 1
            self.set_status(script.status)
            for name, value in script.headers.items():
                self.set_header(name, value)
            self.finish(script.error_body if script.error_body is not None else self.error_json(script.status))
            return

        if script.raw_body is not None:
            self.set_header("Content-Type", self.content_type)
            self.finish(script.raw_body)
            return
        text = apply_stop("".join(script.chunks), self.stop_of(body))
        pieces, used = [], 0
        for chunk in script.chunks:  # the scripted chunking, cut where the stop was
            if used >= len(text):
                break
            pieces.append(text[used : used + len(chunk)])
            used += len(chunk)
        self.set_header("Content-Type", self.content_type)
        for i, piece in enumerate(pieces):
            if script.cut_after is not None and i >= script.cut_after:
                await self.flush()
                self.request.connection.stream.close()  # type: ignore[attr-defined]
                return
            if script.malformed_after is not None and i >= script.malformed_after:
                self.write(b"data: {this is not json\n\n")
                await self.flush()
                break
            if i and script.delay_between:
                await self._sleep(script.delay_between)
            if self._closed:
                return
            self.write(self.event(piece, last=i == len(pieces) - 1))
            if not script.one_write:
                await self.flush()
        if script.report_usage:
            # The fake's tokens: four bytes of the request body each, one per chunk sent.
            self.usage = (len(self.request.body) // 4, len(pieces))
            self.write(self.usage_event(*self.usage))
            fake.reported.append(self.usage)
        if not script.omit_done:
            self.write(self.done())
        self.finish()
        fake.finished += 1

    async def _sleep(self, seconds: float) -> None:
        """Wait, but stop as soon as the client goes away (as a real server would)."""
        try:
            await asyncio.wait_for(self._gone.wait(), seconds)
        except TimeoutError:
            pass


class StatsHandler(tornado.web.RequestHandler):
    """What the server saw, for benchmarks that run it in another process."""

    def initialize(self, fake: FakeFimServer) -> None:
        self.fake = fake

    def get(self) -> None:
        fake = self.fake
        self.finish({"requests": fake.request_count, "finished": fake.finished,
                     "disconnects": fake.disconnects, "in_flight": fake.in_flight})


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class MistralHandler(FakeHandler):
    auth_required = True

    def validation_error(self, body: dict[str, Any]) -> Any | None:
        problems = []
        for name, kind in (("model", str), ("prompt", str)):
            if not isinstance(body.get(name), kind):
                problems.append({"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None})
        temperature = body.get("temperature", 0)
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1.5:
            problems.append({"type": "less_than_equal", "loc": ["body", "temperature"], "msg": "Input should be less than or equal to 1.5"})
        return {"detail": problems} if problems else None

    def event(self, text: str, last: bool) -> bytes:
        return _sse(
            {
                "id": "cmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": "codestral-latest",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop" if last else None}],
            }
        )

    def usage_event(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return _sse(
            {
                "id": "cmpl-fake",
                "object": "chat.completion.chunk",
                "model": "codestral-latest",
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }
        )

    def done(self) -> bytes:
        return b"data: [DONE]\n\n"


class OpenAIHandler(FakeHandler):
    auth_required = False

    def event(self, text: str, last: bool) -> bytes:
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop" if last else None}
        if json.loads(self.request.body).get("logprobs"):  # one token a chunk
            logprob = self.fake.script.logprob
            choice["logprobs"] = {"tokens": [text], "token_logprobs": [logprob], "top_logprobs": [{text: logprob}],
                                  "text_offset": [0]}
        return _sse({"id": "cmpl-fake", "object": "text_completion", "choices": [choice]})

    def usage_event(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = json.loads(self.request.body)
        if not (body.get("stream_options") or {}).get("include_usage"):
            return b""
        return _sse({"id": "cmpl-fake", "object": "text_completion", "choices": [],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}})

    def done(self) -> bytes:
        return b"data: [DONE]\n\n"


class OllamaHandler(FakeHandler):
    content_type = "application/x-ndjson"

    def stop_of(self, body: dict[str, Any]) -> Any:
        return (body.get("options") or {}).get("stop")

    def error_json(self, status: int) -> Any:
        return {"error": f"status {status}"}

    def event(self, text: str, last: bool) -> bytes:
        return (json.dumps({"model": "fake", "response": text, "done": False}) + "\n").encode()

    def done(self) -> bytes:
        final = {"model": "fake", "response": "", "done": True, "done_reason": "stop"}
        if self.usage is not None:
            final |= {"prompt_eval_count": self.usage[0], "eval_count": self.usage[1]}
        return (json.dumps(final) + "\n").encode()


class InfillHandler(FakeHandler):
    def error_json(self, status: int) -> Any:
        return {"error": {"code": status, "message": f"status {status}", "type": "server_error"}}

    def event(self, text: str, last: bool) -> bytes:
        event: dict[str, Any] = {"content": text, "stop": False}
        if json.loads(self.request.body).get("n_probs"):  # one token a chunk
            event["completion_probabilities"] = [{"id": 0, "token": text, "bytes": list(text.encode()),
                                                  "logprob": self.fake.script.logprob, "top_logprobs": []}]
        return _sse(event)

    def done(self) -> bytes:
        final: dict[str, Any] = {"content": "", "stop": True, "tokens_cached": 0,
                                 "timings": {"prompt_ms": 1.0, "predicted_ms": 1.0}}
        if self.usage is not None:
            final |= {"tokens_evaluated": self.usage[0], "tokens_predicted": self.usage[1]}
        return _sse(final)


class ChatHandler(MistralHandler):
    """``/v1/chat/completions`` as Mistral, OpenAI-compatible servers and llama.cpp's server stream it
    (``delta.content`` chunks, ``[DONE]``).  A key is checked when one is sent (servers started without
    one take any request)."""

    auth_required = False

    async def _answer(self, body: dict[str, Any], script: Script) -> None:
        sent = self.request.headers.get("Authorization")
        if sent is not None and self.fake.key is not None and sent != f"Bearer {self.fake.key}":
            self.set_status(401)
            self.finish({"message": "Unauthorized", "request_id": "fake"})
            return
        self._role_sent = False
        await super()._answer(body, script)

    def event(self, text: str, last: bool) -> bytes:
        # As real servers stream chat: a first chunk with the role and no content, and a last, empty delta.
        role = b""
        if not self._role_sent:
            self._role_sent = True
            role = _sse({"id": "chat-fake", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        chunk = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        tail = _sse({"id": "chat-fake", "object": "chat.completion.chunk", "choices": [end]}) if last else b""
        return role + _sse({"id": "chat-fake", "object": "chat.completion.chunk", "choices": [chunk]}) + tail

    def validation_error(self, body: dict[str, Any]) -> Any | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages
        ):
            return {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}]}
        return None


class OllamaChatHandler(OllamaHandler):
    """Ollama's ``/api/chat``: JSON lines with ``message.content``, the last with ``done``."""

    def event(self, text: str, last: bool) -> bytes:
        message = {"role": "assistant", "content": text}
        return (json.dumps({"model": "fake", "message": message, "done": False}) + "\n").encode()

    def done(self) -> bytes:
        final: dict[str, Any] = {"model": "fake", "message": {"role": "assistant", "content": ""}, "done": True}
        if self.usage is not None:
            final |= {"prompt_eval_count": self.usage[0], "eval_count": self.usage[1]}
        return (json.dumps(final) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--text", default="df.head()", help="the completion to stream")
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeFimServer(key=None, keep_requests=False)
        fake.script = Script(chunks=[args.text[i : i + 3] for i in range(0, len(args.text), 3)], delay_first=args.delay)
        fake.start(args.port)
        print(f"fake FIM backend on {fake.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
