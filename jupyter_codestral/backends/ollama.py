"""Ollama's ``/api/generate`` with ``suffix``: Ollama applies the model's FIM template."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from ..errors import ErrorKind, backend_error
from ..usage import Usage
from .base import BackendItem, FimRequest
from .event_streams import LineBuffer, Read, json_object, stream_text
from .http import HttpBackend


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

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        # One JSON object per line; the last has "done": true.
        url = self.settings.url

        def read(line: str) -> Read:
            if not line.strip():
                return Read()
            event = json_object(line, url)
            if "error" in event:
                raise backend_error(ErrorKind.SERVER_ERROR, f"Ollama reported: {event['error']}")
            text = str(event.get("response") or "")
            if event.get("done"):
                return Read(text, Usage.reported(event.get("prompt_eval_count"), event.get("eval_count")), True)
            return Read(text)

        return stream_text(response, LineBuffer(), read, f'{url} ended the stream before "done".')
