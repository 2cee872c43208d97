"""AWS's binary event-stream framing (``application/vnd.amazon.eventstream``), as Bedrock's
``converse-stream`` answers: a sans-IO decoder and the encoder of Tripwire's own messages.

A message is ``total length (4) | headers length (4) | prelude CRC32 (4) | headers | payload |
message CRC32 (4)``, big-endian. Each decoded message comes out as an ``SSEEvent`` whose raw
bytes are the whole message (relayed unchanged), whose ``event`` is its ``:event-type`` (or
``exception:`` and the type for an exception or an error message) and whose data is the JSON
payload (an error message's ``:error-message`` as ``{"message": ...}``). A message whose CRC
does not match is relayed all the same and read as no event: the client's parser judges it.
"""

from __future__ import annotations

import json
import struct
import zlib

from proxy.server.sse import EventTooLarge, SSEEvent

_PRELUDE = 12
_MAX_MESSAGE = 16 * 1024 * 1024  # AWS's limit; a larger length means the framing is lost
# Sizes of the fixed-width header value types (bool true, bool false, byte, short, int, long,
# -, -, timestamp, uuid); 6 (bytes) and 7 (string) carry a 2-byte length.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def headers_of(data: bytes) -> dict[str, str]:
    """The string-valued headers of a message's header block."""
    headers: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        size = data[pos]
        name = data[pos + 1 : pos + 1 + size].decode("utf-8", "replace")
        pos += 1 + size
        kind = data[pos]
        pos += 1
        if kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, pos)
            value = data[pos + 2 : pos + 2 + length]
            pos += 2 + length
            if kind == 7:
                headers[name] = value.decode("utf-8", "replace")
        elif kind in _FIXED:
            pos += _FIXED[kind]
        else:
            break  # an unknown type: its size is unknown, so are the headers after it
    return headers


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One message with string headers, CRCs included."""
    block = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value
        for name, value in ((n, v.encode()) for n, v in headers.items())
    )
    total = _PRELUDE + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + block + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_message(event_type: str, payload: bytes) -> bytes:
    return encode(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception_message(exception_type: str, payload: bytes) -> bytes:
    return encode(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def error_message(code: str, message: str) -> bytes:
    """An error the stream's protocol does not model: its code and message in headers."""
    return encode({":error-code": code, ":error-message": message, ":message-type": "error"}, b"")


class EventStreamDecoder:
    """Feed bytes as they arrive; get back every message completed by them.

    A message whose prelude (its CRC checked) declares more than ``max_event`` bytes (at most
    AWS's own 16 MiB) raises ``EventTooLarge`` before any more of it is buffered; its size is
    the declared length (at most 16 MiB).
    """

    __slots__ = ("_buffer", "_lost", "max_event")

    def __init__(self, max_event: int | None = None) -> None:
        self.max_event = max_event
        self._buffer = bytearray()
        self._lost = False  # the framing is broken: pass the rest on unread

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        buffer += chunk
        if self._lost:
            return self.flush()
        events: list[SSEEvent] = []
        start = 0
        limit = min(self.max_event or _MAX_MESSAGE, _MAX_MESSAGE)
        while len(buffer) - start >= _PRELUDE:
            total, size = struct.unpack_from(">II", buffer, start)
            if total < _PRELUDE + size + 4:
                self._lost = True
                break
            if total > limit:
                if _prelude_ok(buffer, start):
                    # Billed by the length it declares: the provider made that much of it.
                    raise EventTooLarge(min(total, _MAX_MESSAGE), events)
                self._lost = True
                break
            if len(buffer) - start < total:
                break
            raw = bytes(buffer[start : start + total])
            events.append(_read(raw, size))
            start += total
        if start:
            del buffer[:start]
        if self._lost:
            events.extend(self.flush())
        return events

    def flush(self) -> list[SSEEvent]:
        """Bytes left at the end: a message the provider never finished is not relayed, as
        no client could parse it; after lost framing, everything is passed on as it came."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [SSEEvent(rest, None, "")] if rest and self._lost else []

    def frame(self, event: bytes, tail: bytes) -> bytes:
        """A message stands alone wherever the stream is."""
        return event


def _prelude_ok(data: bytes | bytearray, start: int = 0) -> bool:
    (expected,) = struct.unpack_from(">I", data, start + 8)
    return zlib.crc32(bytes(data[start : start + 8])) == int(expected)


def _read(raw: bytes, size: int) -> SSEEvent:
    (message_crc,) = struct.unpack_from(">I", raw, len(raw) - 4)
    if not _prelude_ok(raw) or zlib.crc32(raw[:-4]) != message_crc:
        return SSEEvent(raw, None, "")
    try:
        headers = headers_of(raw[_PRELUDE : _PRELUDE + size])
    except (IndexError, struct.error):
        return SSEEvent(raw, None, "")
    name = headers.get(":event-type") or headers.get(":exception-type")
    payload = raw[_PRELUDE + size : -4].decode("utf-8", "replace")
    kind = headers.get(":message-type")
    if kind == "exception":
        name = "exception:" + (headers.get(":exception-type") or "")
    elif kind == "error":
        name = "exception:" + headers.get(":error-code", "")
        payload = json.dumps({"message": headers.get(":error-message", "")})
    return SSEEvent(raw, name, payload)
