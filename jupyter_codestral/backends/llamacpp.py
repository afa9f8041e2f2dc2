"""llama.cpp server's ``/infill``: the server applies the model's FIM (and repo-level) template.

With the stable layout (the default) the prompt is the notebook up to the
cursor and the rest of its line, so the server's prompt cache
(``cache_prompt``) keeps what it read across keystrokes, cell moves and
executions; when the earlier cells' window drops cells at its start, the
server moves what stays instead of reading it again (``n_cache_reuse``:
runs of that many tokens are shifted into place, by servers that take it;
others ignore the field).  With the split layout later cells go in
``input_extra``.  Edits go to its OpenAI-style ``/v1/chat/completions``, which applies the model's chat
template.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from ..embedded import MIN_CHUNK_TOKENS
from ..templates import split_layout_parts, stable_suffix
from ..usage import Usage
from .base import BackendItem, FimRequest
from .event_streams import Read, SseJson, stream_text, token_logprobs
from .http import HttpBackend

# The shortest run of tokens llama.cpp's server moves into place rather than reads again (as the
# embedded model's worker does).
CACHE_REUSE_TOKENS = MIN_CHUNK_TOKENS


class LlamaCppBackend(HttpBackend):
    name = "llamacpp"
    supports_prefetch = True
    path = "/infill"
    host_label = "The llama.cpp server"

    def payload(self, request: FimRequest) -> dict[str, Any]:
        context = request.context
        payload: dict[str, Any] = {
            "n_predict": 0 if request.prefetch else request.max_tokens,
            "temperature": self.settings.temperature,
            "cache_prompt": True,
            "n_cache_reuse": CACHE_REUSE_TOKENS,
            "stream": True,
            "stop": list(request.stop),
        }
        if self.settings.confidence:
            payload["n_probs"] = 1  # each token's log-probability
        near, _, later = split_layout_parts(context)
        layout = self.settings.prompt.answer_layout  # one prompt per request here
        if layout == "stable":
            payload |= {"input_prefix": context.prefix, "input_suffix": stable_suffix(context), "input_extra": []}
        elif layout == "split" and later.strip():
            payload |= {
                "input_prefix": context.prefix,
                "input_suffix": near,
                "input_extra": [{"filename": "later_cells.py", "text": later}],
            }
        else:
            payload |= {"input_prefix": context.prefix, "input_suffix": context.suffix, "input_extra": []}
        return payload

    def chat_payload(self, request: FimRequest) -> dict[str, Any]:
        # The server's OpenAI-style chat endpoint, with its prompt cache: an edit of the same cell reads only
        # the end of its prompt again.
        payload = super().chat_payload(request) | {"cache_prompt": True, "stream_options": {"include_usage": True}}
        # A prefetch reads the prompt into the cache; one token written is the least the endpoint takes.
        return payload | {"max_tokens": 1} if request.prefetch else payload

    def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncGenerator[BackendItem, None]:
        def read(event: dict[str, Any] | None) -> Read:
            if event is None:
                return Read(last=True)
            text = str(event.get("content") or "")
            if event.get("stop"):  # the last event, with the tokens used
                return Read(text, Usage.reported(event.get("tokens_evaluated"), event.get("tokens_predicted")), True)
            logprobs = token_logprobs(event.get("completion_probabilities"))
            return Read(text, logprob=sum(logprobs), tokens=len(logprobs)) if logprobs else Read(text)

        url = self.settings.url
        return stream_text(
            response, SseJson(url, self.host_label), read, f"{url} ended the stream before its last event."
        )
