"""llama.cpp server's ``/infill``: the server applies the model's FIM (and repo-level) template.

Later cells go in ``input_extra`` when the split layout is chosen, so the
server's prompt cache (``cache_prompt``) can keep them across keystrokes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..errors import backend_error
from ..templates import split_layout_parts
from .base import FimRequest, HttpBackend, drain


class LlamaCppBackend(HttpBackend):
    name = "llamacpp"
    supports_prefetch = True
    path = "/infill"
    host_label = "The llama.cpp server"

    async def stream(self, request: FimRequest) -> AsyncIterator[str]:
        context = request.context
        payload: dict[str, Any] = {
            "n_predict": 0 if request.prefetch else request.max_tokens,
            "temperature": self.settings.temperature,
            "cache_prompt": True,
            "stream": True,
            "stop": list(request.stop),
        }
        near, _, later = split_layout_parts(context)
        if self.settings.layout == "split" and later.strip():
            payload |= {
                "input_prefix": context.prefix,
                "input_suffix": near,
                "input_extra": [{"filename": "later_cells.py", "text": later}],
            }
        else:
            payload |= {"input_prefix": context.prefix, "input_suffix": context.suffix, "input_extra": []}
        async for piece in self.post_stream(payload, self._events):
            yield piece

    async def _events(self, response: httpx.Response) -> AsyncIterator[str]:
        events = self.sse_json(response)
        async for event in events:
            if event is None:
                return
            yield str(event.get("content") or "")
            if event.get("stop"):
                await drain(events)
                return
        raise backend_error("bad_reply", f"{self.settings.url} ended the stream before its last event.")
