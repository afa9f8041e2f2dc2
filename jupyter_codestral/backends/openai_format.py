"""Reading the event streams of OpenAI-style servers (Mistral, vLLM, LM Studio, llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..errors import BackendError, backend_error
from ..usage import Usage


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
    return backend_error("bad_reply", f"{url} sent a malformed event: {what[:200]}")


async def drain(rest: AsyncIterator[Any]) -> None:
    """Read a finished stream to its end, so its connection returns to the pool
    rather than being closed (a new connection per keystroke costs ~1 ms)."""
    async for _ in rest:
        pass


async def lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines as they arrive, without their line ends."""
    async for raw in response.content:
        yield raw.decode("utf-8", "replace").rstrip("\r\n")


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The data of each server-sent event, as the event-stream format defines it (WHATWG HTML
    §9.2): ``data:`` lines, joined by newlines, make one event when a blank line follows; comment
    lines (``:``) and the other fields are skipped.  (aiohttp has no SSE reader; these are its
    rules for the one field we read.)"""
    data: list[str] = []
    async for line in lines(response):
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


async def sse_json(response: aiohttp.ClientResponse, url: str, host_label: str) -> AsyncIterator[dict[str, Any] | None]:
    """Each SSE data payload as JSON; ``None`` for the ``[DONE]`` sentinel."""
    events = sse_data(response)
    async for event in events:
        data = event.strip()
        if not data:
            continue
        if data == "[DONE]":
            await drain(events)
            yield None
            return
        try:
            payload = json.loads(data)
        except ValueError:
            raise malformed(url, data) from None
        if not isinstance(payload, dict):
            raise malformed(url, data)
        if "error" in payload:
            raise backend_error("server_error", f"{host_label} reported: {error_detail(data.encode())}")
        yield payload


def choice_text(payload: dict[str, Any], *path: str) -> str:
    """``payload["choices"][0][path...]`` as a string, or a malformed-reply error."""
    try:
        node: Any = payload["choices"][0]
        for key in path:
            node = node[key]
    except (KeyError, IndexError, TypeError):
        raise backend_error("bad_reply", f"Unexpected event shape: {json.dumps(payload)[:200]}") from None
    return node or ""


async def choice_stream(
    response: aiohttp.ClientResponse, url: str, host_label: str, usage: Usage, *path: str
) -> AsyncIterator[str]:
    """The text of ``choices[0][path...]`` from each event of an OpenAI-style stream ending in
    ``[DONE]``; the ``usage`` an event carries (usually the last) goes into ``usage``."""
    async for event in sse_json(response, url, host_label):
        if event is None:
            return
        usage.report_openai(event)
        if event.get("choices") == [] and "usage" in event:
            continue  # the usage-only event of stream_options.include_usage
        yield choice_text(event, *path)
    raise backend_error("bad_reply", f"{url} ended the stream before [DONE].")
