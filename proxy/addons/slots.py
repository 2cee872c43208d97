"""Stream slots: a bound on the streams one task and one client keep open through a replica.

``request`` takes a slot for a stream (or refuses it as busy, which the SDKs retry after
``Retry-After``); ``done`` gives it back, whatever happened to the call.
"""

from __future__ import annotations

from aiohttp import web

from proxy.config import ServerSettings
from proxy.pipeline.call import Call
from proxy.server.limits import StreamSlots as Slots
from proxy.server.limits import client_key

_KEY = "stream_slot"


class StreamSlots:
    name = "stream_slots"

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    @classmethod
    def from_settings(cls, server: ServerSettings) -> StreamSlots | None:
        slots = Slots.from_settings(server)
        return cls(slots) if slots is not None else None

    async def request(self, call: Call) -> web.StreamResponse | None:
        if call.info.stream:
            client = client_key(call.claims, call.request.remote)
            self.slots.acquire(call.task, client)  # raises TooManyStreams
            call.notes[_KEY] = client
        return None

    def done(self, call: Call) -> None:
        client = call.notes.pop(_KEY, None)
        if client is not None:
            self.slots.release(call.task, client)
