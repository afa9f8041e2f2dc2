"""Ollama's ``/api/generate`` with ``suffix``: Ollama applies the model's FIM template."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from ..errors import backend_error
from .base import FimRequest
from .http import HttpBackend
from .openai_format import LineBuffer, json_object, stream_text


class OllamaBackend(HttpBackend):
    name = "ollama"
    path = "/api/generate"
    host_label = "Ollama"
    content_type = "application/x-ndjson"

    def payload(self, request: FimRequest) -> dict[str, Any]:
        return {
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

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[str, None]:
        # One JSON object per line; the last has "done": true.
        url = self.settings.url

        def read(line: str) -> tuple[str | None, bool]:
            if not line.strip():
                return None, False
            event = json_object(line, url)
            if "error" in event:
                raise backend_error("server_error", f"Ollama reported: {event['error']}")
            if event.get("done"):
                request.usage.report(event.get("prompt_eval_count"), event.get("eval_count"))
            return str(event.get("response") or ""), bool(event.get("done"))

        return stream_text(response, LineBuffer(), read, f'{url} ended the stream before "done".')
