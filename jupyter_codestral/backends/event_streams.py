"""Reading backends' streaming replies: server-sent events (Mistral, OpenAI-style servers, llama.cpp's
``/infill``) and JSON lines (Ollama), into the completion's text and the tokens the call used."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import aiohttp

from .. import jsonio
from ..errors import BackendError, ErrorKind, backend_error
from ..usage import Usage
from ..validation import is_number
from .base import BackendItem, Piece, Scored


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


def malformed(url: str, what: str) -> BackendError:
    return backend_error(ErrorKind.BAD_REPLY, f"{url} sent a malformed event: {what[:200]}")


# A line (or an event) this long is no completion: a broken server, which must not fill the memory.
MAX_LINE_CHARS = 1 << 20


class LineBuffer:
    """Complete lines, without their line ends, from bytes that arrive in pieces of any size
    (a UTF-8 character or a line may be split between two pieces).  A line ends with CRLF, LF or
    a lone CR, as the event-stream format says."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        text = self._partial + self._decoder.decode(data, final)
        held = ""
        if "\r" in text:
            if text.endswith("\r") and not final:
                text, held = text[:-1], "\r"  # the first half of a CRLF, maybe: wait for the next piece
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self._partial = lines.pop() + held
        if len(self._partial) > MAX_LINE_CHARS:
            raise ValueError(f"a line of more than {MAX_LINE_CHARS} characters")
        if final and self._partial:
            lines.append(self._partial)
            self._partial = ""
        return lines


class EventStream:
    """The data of each server-sent event, as the event-stream format defines it (WHATWG HTML
    §9.2): ``data:`` lines, joined by newlines, make one event when a blank line follows; comment
    lines (``:``) and the other fields are skipped.  (aiohttp has no SSE reader; these are its
    rules for the one field we read.)"""

    def __init__(self) -> None:
        self._lines = LineBuffer()
        self._data: list[str] = []
        self._size = 0

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        events = []
        for line in self._lines.feed(data, final):
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data, self._size = [], 0
                continue
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)
                self._size += len(value)
                if self._size > MAX_LINE_CHARS:
                    raise ValueError(f"an event of more than {MAX_LINE_CHARS} characters")
        if final and self._data:
            events.append("\n".join(self._data))
            self._data, self._size = [], 0
        return events


def json_object(text: str, url: str) -> dict[str, Any]:
    """``text`` as a JSON object, or a malformed-reply error."""
    try:
        value = jsonio.loads(text)
    except ValueError:
        raise malformed(url, text) from None
    if not isinstance(value, dict):
        raise malformed(url, text)
    return value


def event_json(data: str, url: str, host_label: str) -> dict[str, Any] | None:
    """One SSE data payload as JSON; ``None`` for the ``[DONE]`` sentinel."""
    data = data.strip()
    if data == "[DONE]":
        return None
    payload = json_object(data, url)
    if "error" in payload:
        raise backend_error(ErrorKind.SERVER_ERROR, f"{host_label} reported: {error_detail(data.encode())}")
    return payload


class SseJson:
    """The JSON payloads of a server-sent event stream (``None`` for ``[DONE]``), from bytes
    that arrive in pieces; what follows ``[DONE]`` is never parsed."""

    def __init__(self, url: str, host_label: str) -> None:
        self._events = EventStream()
        self._url = url
        self._host_label = host_label
        self._done = False

    def feed(self, data: bytes, final: bool = False) -> list[dict[str, Any] | None]:
        payloads: list[dict[str, Any] | None] = []
        if self._done:
            return payloads
        for data_field in self._events.feed(data, final):
            if data_field.strip():
                payload = event_json(data_field, self._url, self._host_label)
                payloads.append(payload)
                if payload is None:
                    self._done = True
                    break
        return payloads


def choice_text(payload: dict[str, Any], *path: str) -> str:
    """``payload["choices"][0][path...]`` as a string, or a malformed-reply error."""
    try:
        node: Any = payload["choices"][0]
        for key in path[:-1]:
            node = node[key]
        if path[-2:-1] == ("delta",):
            # A delta's fields are optional (a chat stream's first chunk names the role, its last may be empty).
            return node.get(path[-1]) or ""
        for key in path[-1:]:
            node = node[key]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise backend_error(ErrorKind.BAD_REPLY, f"Unexpected event shape: {json.dumps(payload)[:200]}") from None
    return node or ""


Event = TypeVar("Event")


class Parser(Protocol[Event]):
    """Turns the body's bytes, as they arrive, into events (:class:`LineBuffer`, :class:`SseJson`)."""

    def feed(self, data: bytes, final: bool = False) -> list[Event]: ...


class Read(NamedTuple):
    """What one event of a backend's stream says."""

    text: str | None = None  # a piece of the completion (None: the event has none)
    usage: Usage | None = None  # the tokens the call used, when the event reports them
    last: bool = False  # the stream's last event
    logprob: float | None = None  # the piece's tokens' summed log-probability, when reported
    tokens: int = 0  # how many tokens that sum is over


def _batch(events: list[Event], read: Callable[[Event], Read]) -> tuple[Piece | None, Usage | None, bool]:
    """The text of events that arrived together (scored, where the backend reports log-probabilities),
    the last usage reported among them, and whether the last event was among them."""
    texts: list[str] = []
    logprob, tokens, scored = 0.0, 0, False
    usage = None
    last = False
    for event in events:
        piece = read(event)
        if piece.text is not None:
            texts.append(piece.text)
            if piece.logprob is not None:
                scored, logprob, tokens = True, logprob + piece.logprob, tokens + piece.tokens
        usage = piece.usage or usage
        if piece.last:
            last = True
            break
    text = "".join(texts)
    if not text:
        return None, usage, last
    return (Scored(text, logprob, tokens) if scored else text), usage, last


async def stream_text(
    response: aiohttp.ClientResponse,
    parser: Parser[Event],
    read: Callable[[Event], Read],
    missing: str,
) -> AsyncGenerator[BackendItem, None]:
    """The completion from ``response``'s body: one piece for each part of it that arrived together
    (one write to the browser, not one per token), then the :class:`Usage` the stream reported.

    ``parser`` makes the events; ``read`` says what each one holds.  After the last, the rest of
    the body is read, never parsed, so that the connection goes back to the pool (a new
    connection per keystroke costs ~1 ms).  ``missing`` is the error if the body ends before the
    last event.  (One generator for the whole body: each layer of generators costs every piece of
    every keystroke.)"""
    chunks = response.content.iter_any()
    usage: Usage | None = None
    ended = False
    async for data in chunks:
        piece, reported, ended = _batch(parser.feed(data), read)
        usage = reported or usage
        if piece is not None:
            yield piece
        if ended:
            async for _ in chunks:
                pass
            break
    if not ended:
        piece, reported, ended = _batch(parser.feed(b"", final=True), read)
        usage = reported or usage
        if piece is not None:
            yield piece
        if not ended:
            raise backend_error(ErrorKind.BAD_REPLY, missing)
    if usage is not None:
        yield usage


def choice_stream(
    response: aiohttp.ClientResponse, url: str, host_label: str, *path: str
) -> AsyncGenerator[BackendItem, None]:
    """The text of ``choices[0][path...]`` from the events of an OpenAI-style stream ending in
    ``[DONE]``, with the tokens' log-probabilities where the server sends them (``logprobs``), and
    the ``usage`` an event carries (usually the last)."""

    def read(event: dict[str, Any] | None) -> Read:
        if event is None:
            return Read(last=True)
        usage = Usage.from_openai(event)
        if event.get("choices") == [] and usage is not None:
            return Read(usage=usage)  # the usage-only event of stream_options.include_usage
        text = choice_text(event, *path)
        logprobs = _token_logprobs(event)
        if logprobs:
            return Read(text, usage, logprob=sum(logprobs), tokens=len(logprobs))
        return Read(text, usage)

    return stream_text(response, SseJson(url, host_label), read, f"{url} ended the stream before [DONE].")


def _token_logprobs(event: dict[str, Any]) -> list[float]:
    """The log-probabilities of an OpenAI-style choice's tokens: the completions API's
    ``logprobs.token_logprobs``, or the chat-style ``logprobs.content[].logprob``."""
    try:
        logprobs = event["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
    if not isinstance(logprobs, dict):
        return []
    values = logprobs.get("token_logprobs")
    if values is None:
        return token_logprobs(logprobs.get("content"))
    return [float(v) for v in values if is_number(v)] if isinstance(values, list) else []


def token_logprobs(tokens: Any) -> list[float]:
    """The ``logprob`` of each of a list of tokens' objects (llama.cpp's ``completion_probabilities``, the
    chat API's ``logprobs.content``)."""
    if not isinstance(tokens, list):
        return []
    return [float(t["logprob"]) for t in tokens if isinstance(t, dict) and is_number(t.get("logprob"))]
