"""A sans-IO decoder for a stream that is one JSON array delivered piece by piece, as Gemini's
``streamGenerateContent`` answers without ``alt=sse``: ``[{...}`` then ``,\\r\\n{...}`` ... ``]``.

Each element comes out as an ``SSEEvent`` as soon as its closing brace arrives, its raw bytes
holding the separator before it, so the relay passes the bytes on unchanged and in order; the
opening ``[`` and the closing ``]`` come out as events of their own with no data. The scan is
resumed where the last read stopped (strings and escapes included), so an element that arrives
in many reads costs time linear in its size. An element (or anything between elements) longer
than ``max_event`` raises ``EventTooLarge`` as soon as its bytes are in, whole or not.
"""

from __future__ import annotations

import re

from proxy.server.sse import EventTooLarge, SSEEvent

# What changes the scanner's state outside a string, and inside one.
_STRUCTURE = re.compile(rb'[\[\]{}"]')
_IN_STRING = re.compile(rb'["\\]')


class JSONArrayDecoder:
    __slots__ = (
        "_buffer",
        "_depth",
        "_escape",
        "_in_string",
        "_opened",
        "_pos",
        "_value",
        "max_event",
    )

    def __init__(self, max_event: int | None = None) -> None:
        self.max_event = max_event
        self._buffer = bytearray()  # from the end of the last event on
        self._pos = 0  # bytes of the buffer already scanned
        self._value = -1  # where the element being read starts in the buffer
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._opened = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        buffer += chunk
        events: list[SSEEvent] = []
        start, pos, end = 0, self._pos, len(buffer)
        while pos < end:
            if self._in_string:
                pos = self._after_string(buffer, pos)
                continue
            found = _STRUCTURE.search(buffer, pos)
            if found is None:
                pos = end
                break
            pos = found.start()
            limit = self.max_event
            if limit is not None and pos + 1 - start > limit:
                raise EventTooLarge(pos + 1 - start, events)
            event = self._structure(buffer, start, pos)
            if event is not None:
                events.append(event)
                start = pos + 1
            pos += 1
        if start:
            del buffer[:start]
            if self._value >= start:
                self._value -= start
            pos -= start
        self._pos = pos
        if self.max_event is not None and len(buffer) > self.max_event:
            raise EventTooLarge(len(buffer), events)
        return events

    def _after_string(self, buffer: bytearray, pos: int) -> int:
        """Where scanning resumes inside a string: past its closing quote, or the buffer's end."""
        if self._escape:
            self._escape = False
            return pos + 1
        found = _IN_STRING.search(buffer, pos)
        if found is None:
            return len(buffer)
        if buffer[found.start()] == 0x5C:  # backslash: the next byte is escaped
            self._escape = True
        else:
            self._in_string = False
        return found.start() + 1

    def _structure(self, buffer: bytearray, start: int, pos: int) -> SSEEvent | None:
        """Account the structural byte at ``pos``; the event it completes, if any."""
        byte = buffer[pos]
        if byte == 0x22:  # "
            self._in_string = True
        elif byte == 0x5B and self._depth == 0 and not self._opened:  # the array's [
            self._opened = True
            return SSEEvent(bytes(buffer[start : pos + 1]), None, "")
        elif byte in (0x7B, 0x5B):  # { or [
            if self._depth == 0:
                self._value = pos
            self._depth += 1
        elif self._depth == 0:  # the array's ]
            return SSEEvent(bytes(buffer[start : pos + 1]), None, "")
        else:
            self._depth -= 1
            if self._depth == 0:
                data = buffer[self._value : pos + 1].decode("utf-8", "replace")
                return SSEEvent(bytes(buffer[start : pos + 1]), None, data)
        return None

    def flush(self) -> list[SSEEvent]:
        """What is left when the stream ends: separators after the ``]`` are passed on; an
        element the provider never finished is not, since no client could parse it."""
        rest = bytes(self._buffer)
        self._buffer = bytearray()
        self._pos = 0
        if rest and self._depth == 0 and not self._in_string:
            return [SSEEvent(rest, None, "")]
        return []

    def frame(self, event: bytes, tail: bytes) -> bytes:
        """An element Tripwire adds (an error object) after ``tail``, closing the array."""
        last = tail.rstrip()[-1:]
        if not last:
            return b"[" + event + b"]"
        if last == b"]":
            return b""  # the array is closed: nothing may follow it
        if last in (b"[", b","):
            return event + b"]"
        return b"," + event + b"]"
