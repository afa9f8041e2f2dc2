"""Mistral's native FIM API (``/v1/fim/completions``) on codestral.mistral.ai or api.mistral.ai."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from ..errors import backend_error
from .base import FimRequest, HttpBackend, choice_stream

CODESTRAL_URL = "https://codestral.mistral.ai"
MISTRAL_URL = "https://api.mistral.ai"


class MistralBackend(HttpBackend):
    name = "mistral"
    path = "/v1/fim/completions"
    host_label = "The Mistral API"

    def auth_message(self, status: int, detail: str) -> str:
        key = self.settings.key_name or "the API key"
        return (
            f"The Mistral API at {self.settings.url} rejected {key} ({status}: {detail}). "
            f"Codestral keys (CODESTRAL_API_KEY) work only on {CODESTRAL_URL}, ordinary Mistral "
            f"keys (MISTRAL_API_KEY) only on {MISTRAL_URL}: the two kinds are not interchangeable."
        )

    async def stream(self, request: FimRequest) -> AsyncIterator[str]:
        if not self.settings.api_key:
            raise backend_error(
                "auth", "No Mistral key is configured: set CODESTRAL_API_KEY or MISTRAL_API_KEY."
            )
        payload = {
            "model": self.settings.model,
            "prompt": request.prefix,
            "suffix": request.suffix,
            "max_tokens": request.max_tokens,
            "temperature": self.settings.temperature,
            "stream": True,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        async for piece in self.post_stream(payload, self._events):
            yield piece

    def _events(self, response: httpx.Response) -> AsyncIterator[str]:
        return choice_stream(self, response, "delta", "content")
