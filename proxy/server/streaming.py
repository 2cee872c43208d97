"""Relaying a provider's event stream to the client, event by event, with no buffering.

The relay can be cut at any moment (a kill from anywhere, or the task's deadline): it stops
reading, closes the upstream connection so the provider stops generating, and ends the
client's stream with an error event in that stream's format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from aiohttp import web

from proxy.detectors.base import Trip
from proxy.providers import StreamTally
from proxy.providers.base import StreamDecoder
from proxy.server.sse import EventTooLarge, SSEDecoder, SSEEvent
from proxy.telemetry.logs import event

_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)


def _take_read_timeout(upstream: aiohttp.ClientResponse) -> float | None:
    """The read timeout aiohttp keeps for this response's connection, which it stops keeping:
    its timer, armed by the read that brought the head, is cancelled by the next read and not
    armed again. Every request on the connection sets its own, so the next one keeps it."""
    connection = upstream.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is None or not protocol.read_timeout:
        return None
    timeout = protocol.read_timeout
    protocol.read_timeout = None
    return timeout


class StreamRelay:
    def __init__(
        self,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        tally: StreamTally,
        error_event: Callable[[Trip], bytes],
        broken_event: Callable[[], bytes],
        hold: Callable[[SSEEvent], bool] | None = None,
        release: Callable[[], Awaitable[bytes | None]] | None = None,
        decoder: StreamDecoder | None = None,
        max_event: int | None = None,
    ) -> None:
        """``hold`` recognises the stream's first closing event: from it on, events wait until
        the stream ends, then ``release`` says what the client gets instead (None: the held
        events themselves)."""
        self.response = response
        self.upstream = upstream
        self.tally = tally
        self.error_event = error_event
        self.broken_event = broken_event
        self.trip: Trip | None = None
        self.client_gone = False
        self.broken = False  # the provider's stream failed before its end
        self.unreadable = 0  # events the tally could not read; relayed all the same
        self.hold = hold
        self.release = release
        self.held: list[bytes] = []
        # Sees each event after the tally read it; None (the usual case) costs one check.
        self.watch: Callable[[SSEEvent], None] | None = None
        self._decoder: StreamDecoder = decoder if decoder is not None else SSEDecoder()
        # One bound for every format's events: SSE, the JSON array, the AWS event stream.
        self._decoder.max_event = max_event
        self._tail = b""  # the last bytes the client was sent, for framing Tripwire's own
        # Output tokens the call reserved, tolerance included: a provider that streams past
        # them (it ignored the cap) is cut, and ``over_limit`` makes the trip. None: unbounded.
        self.output_limit: int | None = None
        self.over_limit: Callable[[int], Trip] | None = None
        self.oversize = False  # an event past max_event ended the stream
        # Books the call before a stream cut or broken off gets Tripwire's closing event, so a
        # client that reads that event and calls again finds the call settled.
        self.closing: Callable[[], Awaitable[None]] | None = None
        # The provider's read timeout (``upstreams.<name>.read_timeout``) over the stream's
        # body, kept by the pump with one timer a stream: aiohttp's re-arms a timer on every
        # read, and a stream is read event by event.
        self._idle_timeout: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        # When the relay last asked the provider for more; the time it spends writing to a slow
        # client is not the provider's (aiohttp, too, stops its timer while reading is paused).
        self._asked_at = 0.0
        self._asking = False

    async def _write(self, data: bytes) -> None:
        self._tail = (self._tail + data[-16:])[-16:]
        await self.response.write(data)

    async def _write_own(self, event: bytes) -> None:
        """An event Tripwire writes itself, framed to fit the stream where it stands."""
        await self._write(self._decoder.frame(event, self._tail))

    def outcome(self, status: int) -> str:
        if self.trip is not None:
            return "cut"
        if self.client_gone:
            return "client_disconnected"
        if self.broken:
            return "stream_broken"
        if not 200 <= status < 300:
            return "provider_error"
        return "ok" if self.tally.final else "stream_incomplete"

    def cut(self, trip: Trip) -> None:
        if self.trip is None:
            self.trip = trip
            self._close_upstream()

    async def run(self) -> None:
        try:
            await self._pump()
        except _CLIENT_GONE:
            self.client_gone = True
            self._close_upstream()
            return
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Connection closed." on a read after the upstream closed.
            if self.trip is None:
                self.broken = True
                event("upstream_stream_broken", logging.WARNING, error=type(exc).__name__)
        except EventTooLarge as exc:
            # Unread, it is billed by its bytes; the client is told the stream broke off.
            self.oversize = self.broken = True
            self.tally.oversize += exc.size
            self.upstream.close()
            event("upstream_event_too_large", logging.WARNING, size=exc.size)
        await self._finish()

    def _close_upstream(self) -> None:
        """Close the connection so the provider stops generating, but first account what
        already arrived and sits unread in the connection's buffer: a provider faster than
        its reader is billed for it."""
        content = self.upstream.content
        try:
            while chunk := content.read_nowait():
                self._accept(self._decoder.feed(chunk))
        except (aiohttp.ClientError, RuntimeError):
            pass  # RuntimeError: the pump is waiting for data, so the buffer is empty
        except EventTooLarge as exc:
            self._accept(exc.before)
            self.tally.oversize += exc.size
        self.upstream.close()

    def _accept(self, events: Iterable[SSEEvent]) -> list[bytes]:
        """The raw events the client is to see, each read by the tally on its way. An event the
        tally cannot read (a provider's odd or hostile payload) is relayed all the same: the
        stream is the provider's, and its usage falls back to what was counted."""
        feed, watch = self.tally.feed, self.watch
        out: list[bytes] = []
        for sse in events:
            try:
                if not feed(sse):
                    continue
            except Exception as exc:
                if not self.unreadable:
                    event("unreadable_stream_event", logging.WARNING, error=type(exc).__name__)
                self.unreadable += 1
            if self.output_limit is not None and self.tally.counted > self.output_limit:
                self._past_reservation()
                break
            if watch is not None:
                watch(sse)
            if self.hold is not None and (self.held or self.hold(sse)):
                self.held.append(sse.raw)
                continue
            out.append(sse.raw)
        return out

    def _past_reservation(self) -> None:
        counted = self.tally.counted
        self.output_limit = None  # once: the buffer drained on the cut is still counted
        if self.over_limit is not None:
            event("output_past_reservation", logging.WARNING, counted=counted)
            self.cut(self.over_limit(counted))

    async def _pump(self) -> None:
        idle = self._idle_timeout = _take_read_timeout(self.upstream)
        if idle is None:
            await self._relay()
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(idle, self._idle_check)
        try:
            await self._relay()
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

    def _idle_check(self) -> None:
        """The provider sent nothing for the read timeout: the stream is broken off, as
        aiohttp's own timer would have it (``SocketTimeoutError``); else checked again when the
        timeout from the last read runs out."""
        assert self._idle_timeout is not None
        loop = asyncio.get_running_loop()
        left = self._asked_at + self._idle_timeout - loop.time()
        if not self._asking:  # writing to the client: the provider's time starts after it
            left = self._idle_timeout
        if left > 0:
            self._idle_timer = loop.call_later(left, self._idle_check)
            return
        self._idle_timer = None
        self.upstream.content.set_exception(
            aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        )
        self.upstream.close()

    async def _relay(self) -> None:
        decoder = self._decoder
        loop = asyncio.get_running_loop()
        self._asked_at, self._asking = loop.time(), True
        async for chunk in self.upstream.content.iter_any():
            self._asking = False
            # The events of one upstream read leave in one write: fewer syscalls, same timing.
            try:
                events = decoder.feed(chunk)
            except EventTooLarge as exc:
                # The whole events ahead of the oversized one are the client's all the same.
                out = self._accept(exc.before)
                if out and self.trip is None:
                    await self._write(b"".join(out))
                raise
            out = self._accept(events)
            if self.trip is not None:
                return
            if out:
                await self._write(out[0] if len(out) == 1 else b"".join(out))
                if self.trip is not None:
                    return  # cut during the write: the upstream connection is closed already
            self._asked_at, self._asking = loop.time(), True
        out = self._accept(decoder.flush())
        if out and self.trip is None:
            await self._write(b"".join(out))

    async def _finish(self) -> None:
        try:
            if self.held and self.trip is None:
                await self._release()
            if (self.trip is not None or self.broken) and self.closing is not None:
                await self.closing()
            if self.trip is not None:
                await self._write_own(self.error_event(self.trip))
            elif self.broken:
                # A silently truncated stream would look complete to the client's SDK.
                await self._write_own(self.broken_event())
            await self.response.write_eof()
        except _CLIENT_GONE:
            self.client_gone = True

    async def _release(self) -> None:
        instead = await self.release() if self.release is not None else None
        if self.trip is None:  # a kill while the verdict was awaited ends it as any kill does
            if instead is not None:
                await self._write_own(instead)
            else:
                await self._write(b"".join(self.held))
