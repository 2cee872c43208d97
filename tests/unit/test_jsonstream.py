"""The JSON-array stream decoder: Gemini's streamGenerateContent without alt=sse."""

from __future__ import annotations

import json

import pytest

from proxy.server.jsonstream import JSONArrayDecoder

CHUNKS = [
    {"candidates": [{"content": {"parts": [{"text": 'a "quoted" {brace} [x] \\ end'}]}}]},
    {"candidates": [{"content": {"parts": [{"text": 'ünïcode ✓ \\" }]'}]}}]},
    {"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 7}, "list": [[1], {}]},
]
STREAM = (
    b"[" + b",\r\n".join(json.dumps(c, indent=2, ensure_ascii=False).encode() for c in CHUNKS)
) + b"]\n"


def _decode(pieces: list[bytes]) -> tuple[list[str], bytes]:
    decoder = JSONArrayDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.flush()
    return [e.data for e in events if e.data], b"".join(e.raw for e in events)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_elements_come_out_whole_however_the_bytes_are_split(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    data, raw = _decode(pieces)
    assert [json.loads(d) for d in data] == CHUNKS
    assert raw == STREAM  # relayed byte for byte


def test_an_element_is_out_as_soon_as_it_closes() -> None:
    decoder = JSONArrayDecoder()
    first = json.dumps(CHUNKS[0]).encode()
    events = decoder.feed(b"[" + first)
    assert [e.raw for e in events] == [b"[", first]
    assert json.loads(events[1].data) == CHUNKS[0]
    assert decoder.feed(b',\r\n{"a": "}') == []  # inside a string: not closed
    (event,) = decoder.feed(b'"}')
    assert event.raw == b',\r\n{"a": "}"}' and json.loads(event.data) == {"a": "}"}


def test_an_unfinished_element_is_not_relayed() -> None:
    decoder = JSONArrayDecoder()
    decoder.feed(b'[{"a": 1},\r\n{"b": "cut')
    assert decoder.flush() == []


@pytest.mark.parametrize(
    ("written", "framed"),
    [
        (b"", b"[{}]"),
        (b"[", b"{}]"),
        (b'[{"a": 1}', b",{}]"),
        (b'[{"a": 1}\n,\r\n', b"{}]"),
        (b'[{"a": 1}]', b""),
    ],
)
def test_tripwire_s_own_element_keeps_the_array_valid(written: bytes, framed: bytes) -> None:
    assert JSONArrayDecoder().frame(b"{}", written[-16:]) == framed
    if framed:
        assert isinstance(json.loads(written + framed), list)
