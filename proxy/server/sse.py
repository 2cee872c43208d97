"""A sans-IO decoder that splits a server-sent-events byte stream into whole events.

Each event keeps its raw bytes, so the forwarder can pass it on unchanged (or drop it), and
exposes its ``event`` name and joined ``data`` lines for the parsers that read copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


@dataclass(slots=True)
class SSEEvent:
    raw: bytes
    event: str | None
    data: str


def _parse(raw: bytes) -> SSEEvent:
    event: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
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


class SSEDecoder:
    """Feed bytes as they arrive; get back every event completed by them."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        while True:
            end = -1
            width = 0
            for separator in _SEPARATORS:
                found = buffer.find(separator, start)
                if found != -1 and (end == -1 or found < end):
                    end, width = found, len(separator)
            if end == -1:
                break
            yield _parse(buffer[start : end + width])
            start = end + width
        self._buffer = buffer[start:]

    def flush(self) -> Iterator[SSEEvent]:
        """Whatever is left when the stream ends without a final blank line."""
        if self._buffer.strip():
            yield _parse(self._buffer)
        self._buffer = b""
