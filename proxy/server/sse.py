"""A sans-IO decoder that splits a server-sent-events byte stream into whole events.

Each event keeps its raw bytes, so the forwarder can pass it on unchanged (or drop it), and
exposes its ``event`` name and joined ``data`` lines for the parsers that read copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
_LONGEST_SEPARATOR = max(map(len, _SEPARATORS))
# The first of any separator: alternatives at one position never overlap, so the earliest
# match is the earliest separator.
_SEPARATOR = re.compile(b"|".join(re.escape(s) for s in _SEPARATORS))


@dataclass(slots=True)
class SSEEvent:
    raw: bytes
    event: str | None
    data: str


# Lines end at CRLF, LF or CR, and nowhere else: a JSON string may hold U+2028 or U+0085, which
# ``str.splitlines`` would split at.
_LINE_END = re.compile(r"\r\n|\r|\n")


def _parse(raw: bytes) -> SSEEvent:
    if raw.endswith(b"\n\n") and b"\r" not in raw:
        # The usual events, read without splitting lines: one data line (OpenAI's), or an
        # event line and a data line (Anthropic's), then the blank line.
        lines = raw.count(b"\n")
        if lines == 2 and raw.startswith(b"data: "):
            return SSEEvent(raw, None, raw[6:-2].decode("utf-8", "replace"))
        if lines == 3 and raw.startswith(b"event: "):
            end = raw.index(b"\n")
            if raw.startswith(b"data: ", end + 1):
                return SSEEvent(
                    raw,
                    raw[7:end].decode("utf-8", "replace"),
                    raw[end + 7 : -2].decode("utf-8", "replace"),
                )
    return _parse_lines(raw)


def _parse_lines(raw: bytes) -> SSEEvent:
    """Any event, line by line, as the SSE specification reads one."""
    event: str | None = None
    data: list[str] = []
    for line in _LINE_END.split(raw.decode("utf-8", "replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    return SSEEvent(raw, event, "\n".join(data))


class EventTooLarge(Exception):
    """An event past the decoder's bound (``max_event``): the stream cannot be read on. Every
    decoder raises it (SSE, the JSON array, the AWS event stream); ``size`` is the bytes of the
    event that arrived (more than the bound; for an AWS message, the length its prelude
    declares), ``before`` the whole events the same read completed ahead of it."""

    def __init__(self, size: int, before: list[SSEEvent] | None = None) -> None:
        super().__init__(f"a stream event of more than {size} bytes")
        self.size = size
        self.before = before or []


class SSEDecoder:
    """Feed bytes as they arrive; get back every event completed by them.

    Only bytes not searched before are searched for a separator (plus the few before them a
    separator could straddle), so an event that arrives in many reads costs time linear in its
    size, not quadratic.
    """

    __slots__ = ("_buffer", "_carriage", "_searched", "max_event")

    def __init__(self, max_event: int | None = None) -> None:
        # An event longer than this raises EventTooLarge as soon as its bytes are in, whole
        # or not: one hostile event must not grow the buffer without bound.
        self.max_event = max_event
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no separator
        # A stream without a carriage return so far can only hold "\n\n" separators.
        self._carriage = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        if not buffer and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            at_once = self._at_once(chunk)
            if at_once is not None:
                return at_once
        buffer += chunk
        if not self._carriage and b"\r" in chunk:
            self._carriage = True
        events: list[SSEEvent] = []
        start = 0
        search_from = max(0, self._searched - _LONGEST_SEPARATOR + 1)
        while True:
            if self._carriage:
                found = _SEPARATOR.search(buffer, search_from)
                if found is None:
                    break
                end, width = found.start(), found.end() - found.start()
            else:
                end, width = buffer.find(b"\n\n", search_from), 2
                if end == -1:
                    break
            if self.max_event is not None and end + width - start > self.max_event:
                raise EventTooLarge(end + width - start, events)
            events.append(_parse(bytes(buffer[start : end + width])))
            start = search_from = end + width
        if start:
            del buffer[:start]
        self._searched = len(buffer)
        if self.max_event is not None and len(buffer) > self.max_event:
            raise EventTooLarge(len(buffer), events)
        return events

    def _at_once(self, chunk: bytes) -> list[SSEEvent] | None:
        """A read that ends where an event does, with nothing before it and no carriage return,
        as providers mostly send their events: read without buffering or searching for a
        separator of another kind. None for a read that ends inside the next event."""
        if self.max_event is None or len(chunk) <= self.max_event:
            # One event, as its line ends (counted once) say: a data line alone (OpenAI's) or
            # after an event line (Anthropic's) leaves only the final blank line, so no other
            # event can start inside the read.
            lines = chunk.count(b"\n")
            if lines == 2 and chunk.startswith(b"data: "):
                return [SSEEvent(chunk, None, chunk[6:-2].decode("utf-8", "replace"))]
            if lines == 3 and chunk.startswith(b"event: "):
                end = chunk.index(b"\n")
                if chunk.startswith(b"data: ", end + 1):
                    name = chunk[7:end].decode("utf-8", "replace")
                    return [SSEEvent(chunk, name, chunk[end + 7 : -2].decode("utf-8", "replace"))]
        parts = chunk.split(b"\n\n")
        return None if parts[-1] else self._whole(parts)

    def _whole(self, parts: list[bytes]) -> list[SSEEvent]:
        """The events of a read without a carriage return, split at its blank lines, which
        ended with one."""
        events: list[SSEEvent] = []
        for part in parts[:-1]:
            raw = part + b"\n\n"
            if self.max_event is not None and len(raw) > self.max_event:
                raise EventTooLarge(len(raw), events)
            if part.startswith(b"data: ") and b"\n" not in part:  # one data line
                events.append(SSEEvent(raw, None, part[6:].decode("utf-8", "replace")))
            else:
                events.append(_parse(raw))
        return events

    def frame(self, event: bytes, tail: bytes) -> bytes:
        """An SSE event stands alone wherever the stream is."""
        return event

    def flush(self) -> list[SSEEvent]:
        """Whatever is left when the stream ends without a final blank line."""
        events = [_parse(bytes(self._buffer))] if self._buffer.strip() else []
        self._buffer = bytearray()
        self._searched = 0
        return events
