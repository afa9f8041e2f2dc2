"""Ollama's ``/api/generate`` with ``suffix``: Ollama applies the model's FIM template."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp

from ..errors import backend_error
from .base import FimRequest
from .http import HttpBackend
from .openai_format import drain, lines, malformed


class OllamaBackend(HttpBackend):
    name = "ollama"
    path = "/api/generate"
    host_label = "Ollama"
    content_type = "application/x-ndjson"

    async def stream(self, request: FimRequest) -> AsyncGenerator[str, None]:
        payload = {
            "model": self.settings.model,
            "prompt": request.prefix,
            "suffix": request.suffix,
            "stream": True,
            "options": {
                "num_predict": request.max_tokens,
                "temperature": self.settings.temperature,
                "stop": list(request.stop),
            },
        }
        async for piece in self.post_stream(payload, request):
            yield piece

    async def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncIterator[str]:
        # One JSON object per line; the last has "done": true.
        body = lines(response)
        async for line in body:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                raise malformed(self.settings.url, line) from None
            if not isinstance(event, dict):
                raise malformed(self.settings.url, line)
            if "error" in event:
                raise backend_error("server_error", f"Ollama reported: {event['error']}")
            yield str(event.get("response") or "")
            if event.get("done"):
                request.usage.report(event.get("prompt_eval_count"), event.get("eval_count"))
                await drain(body)
                return
        raise backend_error("bad_reply", f'{self.settings.url} ended the stream before "done".')
