"""Connection slots that survive cancellation: a workaround for encode/httpcore#1093.

httpcore 1.0.9 (under httpx) loses a connection-pool slot for good when a
request is cancelled while it waits for, or sets up, a connection.
Keystrokes cancel requests all the time, and once the slots are gone every
completion times out.  So requests queue in a semaphore of ours, never in
httpcore's pool, and a request is sent in a task of its own: a cancellation
that arrives before the request is on the wire is held back until httpcore
waits for the answer, where cancelling just closes the connection (which
tells the backend to stop).

Delete this module (``HttpBackend`` can then call ``client.send`` directly)
once httpx depends on an httpcore release with that issue fixed and
``tests/test_api.py::test_abandoned_requests_under_pool_contention_leave_no_connection_behind``
passes without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx


class Slot:
    """One of the backend's connections, held from the request until its reply is closed."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.held = False

    async def take(self) -> None:
        await self.slots.acquire()
        self.held = True

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    def hand_over(self) -> Callable[[], None]:
        """Leave the release to whoever finishes the request in the background."""
        self.held = False
        return self.slots.release


async def send(client: httpx.AsyncClient, request: httpx.Request, slot: Slot) -> httpx.Response:
    """``client.send(request, stream=True)``, but a cancellation only lands once the request is on the wire.

    Until then the slot stays taken; a reply that arrives after its
    requester left is closed in the background, and only then is the slot freed."""
    abandoned = on_the_wire = False
    sending: asyncio.Task[httpx.Response]

    async def trace(event: str, info: dict[str, Any]) -> None:
        nonlocal on_the_wire
        if event == "http11.receive_response_headers.started":
            on_the_wire = True
            if abandoned:
                sending.cancel()

    request.extensions["trace"] = trace
    sending = asyncio.ensure_future(client.send(request, stream=True))
    try:
        return await asyncio.shield(sending)
    except asyncio.CancelledError:
        abandoned = True
        if on_the_wire:
            sending.cancel()
        release = slot.hand_over()
        sending.add_done_callback(lambda task: _close_unwanted(task, release))
        raise


_closing: set[asyncio.Task[None]] = set()


def _close_unwanted(sending: asyncio.Task[httpx.Response], release: Callable[[], None]) -> None:
    """A reply nobody waits for any more: close it, then free its slot."""
    if sending.cancelled() or sending.exception() is not None:
        release()
        return

    async def close() -> None:
        try:
            await sending.result().aclose()
        finally:
            release()

    closing = asyncio.ensure_future(close())
    _closing.add(closing)  # the loop holds tasks weakly: keep it until it is done
    closing.add_done_callback(_closing.discard)
