"""Property-based fuzzing of ``POST codestral/complete``: whatever arrives, the
answer is a JSON error with a readable message (or a completion), never a 500,
a hang or a traceback, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
from conftest import notebook_request
from fake_backends import FakeFimServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=25)

cell = st.fixed_dictionaries(
    {"cell_type": st.sampled_from(["code", "markdown", "raw", "sql", 3, None]), "source": st.text(max_size=50) | json_scalars}
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "cells": st.lists(cell, max_size=6) | json_values,
        "cell_index": st.integers(-3, 8) | json_scalars,
        "cursor": st.integers(-5, 60) | json_scalars,
        "text": st.text(max_size=40) | json_scalars,
        "language": json_scalars,
        "path": json_scalars,
        "stream": json_scalars,
        "max_tokens": st.integers(-5, 5000) | json_scalars,
        "single_line": json_scalars,
        "prefetch": json_scalars,
        "kernel_id": json_scalars,
    },
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    request_like.map(lambda v: json.dumps(v).encode()),
    # lone surrogates, escaped so they survive JSON encoding
    st.sampled_from(['{"text": "\\udc80", "cursor": 0}', '{"cells": [{"cell_type": "code", "source": "\\ud800x"}], "cell_index": 0, "cursor": 1}']).map(str.encode),
    st.integers(1, 3000).map(lambda depth: ("[" * depth + "]" * depth).encode()),
    st.integers(1, 3000).map(lambda depth: ('{"a":' * depth + "1" + "}" * depth).encode()),
)


async def test_fuzzed_bodies_get_a_readable_4xx_or_a_completion(
    server_url: str, jp_auth_header: dict[str, str], fake_backend: FakeFimServer
) -> None:
    statuses: dict[int, int] = {}

    def fuzz() -> None:
        # Hypothesis drives a blocking client from a thread while the server
        # runs on the test's event loop, so failing bodies still shrink.
        with httpx.Client(headers=jp_auth_header, timeout=20) as client:

            @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(raw_bodies)
            def answer_is_clean(body: bytes) -> None:
                response = client.post(f"{server_url}/complete", content=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:300]
                last = json.loads(response.text.strip().splitlines()[-1])
                if response.status_code != 200:
                    assert isinstance(last["error"]["message"], str) and last["error"]["message"]
                assert "Traceback" not in response.text

            answer_is_clean()

    await asyncio.to_thread(fuzz)
    assert statuses.get(400, 0) > 50, statuses
    # Still serving.
    async with httpx.AsyncClient(headers=jp_auth_header) as client:
        reply = await client.post(f"{server_url}/complete", json=notebook_request())
    assert reply.status_code == 200 and reply.json()["completion"] == "df.head()"
