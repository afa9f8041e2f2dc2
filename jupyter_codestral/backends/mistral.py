"""Mistral's native FIM API (``/v1/fim/completions``) on codestral.mistral.ai or api.mistral.ai."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp

from ..errors import ErrorKind, backend_error
from .base import BackendItem, FimRequest
from .event_streams import choice_stream
from .http import HttpBackend

CODESTRAL_URL = "https://codestral.mistral.ai"
MISTRAL_URL = "https://api.mistral.ai"


def mistral_url(environ: Mapping[str, str]) -> str:
    """The host for the key the environment holds: a Mistral key alone means api.mistral.ai."""
    codestral = environ.get("CODESTRAL_API_KEY", "").strip()
    mistral = environ.get("MISTRAL_API_KEY", "").strip()
    return MISTRAL_URL if mistral and not codestral else CODESTRAL_URL


def mistral_key(url: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(key, the variable it came from) for ``url``: a Codestral key belongs to
    codestral.mistral.ai, a Mistral key to api.mistral.ai."""
    codestral = environ.get("CODESTRAL_API_KEY", "").strip()
    mistral = environ.get("MISTRAL_API_KEY", "").strip()
    if codestral and ("api.mistral.ai" not in url or not mistral):
        return codestral, "CODESTRAL_API_KEY"
    if mistral:
        return mistral, "MISTRAL_API_KEY"
    return None, None


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

    def _check_key(self) -> None:
        if not self.settings.api_key:
            raise backend_error(
                ErrorKind.AUTH, "No Mistral key is configured: set CODESTRAL_API_KEY or MISTRAL_API_KEY."
            )

    def chat_payload(self, request: FimRequest) -> dict[str, Any]:
        # Mistral's chat completions (Codestral takes chat too, on both hosts).
        self._check_key()
        return super().chat_payload(request)

    def payload(self, request: FimRequest) -> dict[str, Any]:
        self._check_key()
        payload: dict[str, Any] = {
            "model": self.settings.model,
            "prompt": request.prefix,
            "suffix": request.suffix,
            "max_tokens": request.max_tokens,
            "temperature": self.settings.temperature,
            "stream": True,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return choice_stream(response, self.settings.url, self.host_label, "delta", "content")
