"""llama.cpp server's ``/infill``: the server applies the model's FIM (and repo-level) template.

With the stable layout (the default) the prompt is the notebook up to the
cursor and the rest of its line, so the server's prompt cache
(``cache_prompt``) keeps what it read across keystrokes, cell moves and
executions; with the split layout later cells go in ``input_extra``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp

from ..errors import backend_error
from ..templates import split_layout_parts, stable_suffix
from .base import FimRequest
from .http import HttpBackend
from .openai_format import drain, sse_json


class LlamaCppBackend(HttpBackend):
    name = "llamacpp"
    supports_prefetch = True
    path = "/infill"
    host_label = "The llama.cpp server"

    async def stream(self, request: FimRequest) -> AsyncGenerator[str, None]:
        context = request.context
        payload: dict[str, Any] = {
            "n_predict": 0 if request.prefetch else request.max_tokens,
            "temperature": self.settings.temperature,
            "cache_prompt": True,
            "stream": True,
            "stop": list(request.stop),
        }
        near, _, later = split_layout_parts(context)
        if self.settings.layout == "stable":
            payload |= {"input_prefix": context.prefix, "input_suffix": stable_suffix(context), "input_extra": []}
        elif self.settings.layout == "split" and later.strip():
            payload |= {
                "input_prefix": context.prefix,
                "input_suffix": near,
                "input_extra": [{"filename": "later_cells.py", "text": later}],
            }
        else:
            payload |= {"input_prefix": context.prefix, "input_suffix": context.suffix, "input_extra": []}
        async for piece in self.post_stream(payload, request):
            yield piece

    async def events(self, response: aiohttp.ClientResponse, request: FimRequest) -> AsyncIterator[str]:
        events = sse_json(response, self.settings.url, self.host_label)
        async for event in events:
            if event is None:
                return
            yield str(event.get("content") or "")
            if event.get("stop"):
                request.usage.report(event.get("tokens_evaluated"), event.get("tokens_predicted"))
                await drain(events)
                return
        raise backend_error("bad_reply", f"{self.settings.url} ended the stream before its last event.")
