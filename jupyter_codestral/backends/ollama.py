"""Ollama's ``/api/generate`` with ``suffix``: Ollama applies the model's FIM template; ``/api/chat`` for edits."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
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

    chat_path = "/api/chat"

    def chat_payload(self, request: FimRequest) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "messages": [message.to_json() for message in request.chat],
            "stream": True,
            "options": {"num_predict": request.max_tokens, "temperature": self.settings.temperature},
        }

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return self._lines(response, lambda event: str(event.get("response") or ""))

    def chat_events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        def content(event: dict[str, Any]) -> str:
            message = event.get("message")
            return str(message.get("content") or "") if isinstance(message, dict) else ""

        return self._lines(response, content)

    def _lines(
        self, response: aiohttp.ClientResponse, text_of: Callable[[dict[str, Any]], str]
    ) -> AsyncGenerator[BackendItem, None]:
        # One JSON object per line; the last has "done": true.
        url = self.settings.url

        def read(line: str) -> Read:
            if not line.strip():
                return Read()
            event = json_object(line, url)
            if "error" in event:
                raise backend_error(ErrorKind.SERVER_ERROR, f"Ollama reported: {event['error']}")
            text = text_of(event)
            if event.get("done"):
                return Read(text, Usage.reported(event.get("prompt_eval_count"), event.get("eval_count")), True)
            return Read(text)

        return stream_text(response, LineBuffer(), read, f'{url} ended the stream before "done".')
