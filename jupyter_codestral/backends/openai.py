"""OpenAI-compatible ``/v1/completions`` (vLLM, LM Studio, llama.cpp's server), and ``/v1/chat/completions`` for edits.

Most of these servers ignore or refuse ``suffix``, so by default the prompt
is a raw FIM prompt in the model family's template.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from .base import BackendItem, FimRequest
from .event_streams import choice_stream
from .http import HttpBackend


class OpenAIBackend(HttpBackend):
    name = "openai"
    path = "/v1/completions"
    host_label = "The OpenAI-compatible server"

    def payload(self, request: FimRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": request.max_tokens,
            "temperature": self.settings.temperature,
            "stream": True,
            # vLLM, LM Studio and llama.cpp's server then end with the tokens used (others ignore it).
            "stream_options": {"include_usage": True},
        }
        if self.settings.confidence:
            payload["logprobs"] = 1  # each token's log-probability (the completions API's)
        if self.settings.openai_suffix:
            payload |= {"prompt": request.prefix, "suffix": request.suffix, "stop": list(request.stop)}
        else:
            payload |= {"prompt": self.raw_prompt(request), "stop": self.stop_sequences(request)}
        return payload

    def chat_payload(self, request: FimRequest) -> dict[str, Any]:
        return super().chat_payload(request) | {"stream_options": {"include_usage": True}}

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        return choice_stream(response, self.settings.url, self.host_label, "text")
