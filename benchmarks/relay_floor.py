"""Reference endpoints for ``benchmarks/load_test.py --relay``: what a completion endpoint costs at least.

A Jupyter server extension that only the benchmark loads (never the product):

- ``POST relay-floor/reply``: the request parsed and validated as ``codestral/complete`` does, the
  backend's time waited, then a two-line NDJSON reply: what any streaming endpoint taking our
  request costs on top of Jupyter's own handling.
- ``POST relay-floor/relay``: the same, with one streamed request to the backend in between (aiohttp,
  the server's session settings, a Mistral FIM body of the prompt's size encoded by orjson, read to
  its end): the least a relay costs, before any of the completion's own work (context,
  postprocessing, events).

Configured by environment: ``RELAY_FLOOR_BACKEND`` (the backend's URL), ``RELAY_FLOOR_DELAY``
(seconds the reply endpoint waits: the backend's delay).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import orjson
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_codestral.request import parse_completion_request

LINES = ({"delta": "df.head()"}, {"done": True, "completion": "df.head()"})


class ReferenceHandler(APIHandler):
    auth_resource = "api"

    def reply(self) -> None:
        self.set_header("Content-Type", "application/x-ndjson")
        for line in LINES:
            self.write(json.dumps(line) + "\n")
        self.finish()


class ReplyHandler(ReferenceHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        parse_completion_request(self.request.body)
        await asyncio.sleep(float(os.environ.get("RELAY_FLOOR_DELAY", "0.1")))
        self.reply()


class RelayHandler(ReferenceHandler):
    session: aiohttp.ClientSession | None = None

    @classmethod
    def backend(cls) -> aiohttp.ClientSession:
        if cls.session is None:
            cls.session = aiohttp.ClientSession(
                base_url=os.environ["RELAY_FLOOR_BACKEND"].rstrip("/") + "/",
                headers={"Authorization": "Bearer load-test-key", "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=10),
                connector=aiohttp.TCPConnector(limit=20, keepalive_timeout=60),
                trust_env=False,
            )
        return cls.session

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = parse_completion_request(self.request.body)
        source = request.current_source
        payload: dict[str, Any] = {
            "model": "codestral-latest",
            "prompt": "".join(c.source for c in request.cells[: request.cell_index]) + source[: request.cursor],
            "suffix": source[request.cursor :] + "".join(c.source for c in request.cells[request.cell_index + 1 :]),
            "max_tokens": 64,
            "temperature": 0.2,
            "stream": True,
        }
        async with self.backend().post("v1/fim/completions", data=orjson.dumps(payload)) as response:
            async for _ in response.content.iter_any():
                pass
        self.reply()


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "relay_floor"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"].rstrip("/")
    serverapp.web_app.add_handlers(
        ".*$", [(f"{base}/relay-floor/reply", ReplyHandler), (f"{base}/relay-floor/relay", RelayHandler)]
    )
