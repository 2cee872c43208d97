import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.server.sse import EventTooLarge, SSEDecoder, _parse_lines


def test_events_split_across_chunks_keep_their_raw_bytes() -> None:
    stream = b'data: {"a":1}\n\nevent: message_delta\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(stream), 7):
        events.extend(decoder.feed(stream[i : i + 7]))
    assert b"".join(e.raw for e in events) == stream
    assert [e.event for e in events] == [None, "message_delta", None]
    assert [e.data for e in events] == ['{"a":1}', '{"b":2}', "[DONE]"]


def test_crlf_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    events = list(decoder.feed(b": ping\r\n\r\nevent: x\r\ndata: one\r\ndata: two\r\n\r\n"))
    assert events[1].event == "x" and events[1].data == "one\ntwo"
    assert events[0].data == ""


def test_flush_returns_an_unterminated_tail() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: tail")) == []
    assert [e.data for e in decoder.flush()] == ["tail"]


def test_one_event_per_read_reads_as_the_same_events() -> None:
    stream = [
        b'data: {"a":1}\n\n',
        b"event: ping\ndata: x\n\n",
        b"data: a\n\n\n",
        b"data: [DONE]\n\n",
    ]
    whole = SSEDecoder().feed(b"".join(stream))
    decoder = SSEDecoder()
    one_by_one = [event for read in stream for event in decoder.feed(read)]
    assert [(e.raw, e.event, e.data) for e in one_by_one] == [
        (e.raw, e.event, e.data) for e in whole
    ]


def test_a_whole_event_past_the_bound_is_refused_in_one_read_too() -> None:
    decoder = SSEDecoder(max_event=64)
    assert [e.data for e in decoder.feed(b"data: " + b"x" * 50 + b"\n\n")] == ["x" * 50]
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_many_events_in_one_read_split_as_they_would_arrive_apart() -> None:
    reads = [b"data: a\n\n\ndata: b\n\n", b"\n\n", b'data: {"c":1}\n\ndata: [DONE]\n\n']
    decoder = SSEDecoder()
    together = [event for read in reads for event in decoder.feed(read)]
    byte_by_byte = SSEDecoder()
    apart = [
        e for read in reads for i in range(len(read)) for e in byte_by_byte.feed(read[i : i + 1])
    ]
    assert [(e.raw, e.data) for e in together] == [(e.raw, e.data) for e in apart]
    assert b"".join(e.raw for e in together) == b"".join(reads)


# Text a provider can send: UTF-8, so no lone surrogates.
_TEXT = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40
)


@settings(max_examples=500, deadline=None)
@given(name=_TEXT, data=_TEXT, event_line=st.booleans())
def test_the_usual_events_read_as_the_line_by_line_parser_reads_them(
    name: str, data: str, event_line: bool
) -> None:
    raw = (f"event: {name}\n" if event_line else "").encode() + f"data: {data}\n\n".encode()
    fast = SSEDecoder().feed(raw)
    assert [(e.raw, e.event, e.data) for e in fast] == [
        (e.raw, e.event, e.data) for e in [_parse_lines(raw)]
    ]


def test_a_data_line_ends_only_at_a_line_break() -> None:
    """U+2028 and NEL are characters of a JSON string, not line ends (str.splitlines would cut
    the data there and lose the event's JSON)."""
    text = '{"type":"content_block_delta","delta":{"text":"a\u2028b\u0085c"}}'
    for raw in (
        f"event: content_block_delta\ndata: {text}\n\n".encode(),
        f"event: content_block_delta\r\ndata: {text}\r\n\r\n".encode(),
        f": comment\nevent: content_block_delta\ndata: {text}\n\n".encode(),
    ):
        (event,) = SSEDecoder().feed(raw)
        assert (event.event, event.data) == ("content_block_delta", text)


_LINE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
)
_EVENT = st.tuples(
    st.booleans(),  # a comment line first
    st.one_of(st.none(), _LINE),  # an event line
    st.lists(_LINE, max_size=3),  # data lines
    st.sampled_from(["\n", "\r\n"]),  # line end
    st.integers(min_value=0, max_value=2),  # blank lines more after the event
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_EVENT, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 400)),
    at_line_ends=st.lists(st.booleans(), min_size=1),
)
def test_any_reads_of_a_stream_give_the_events_a_byte_at_a_time_gives(
    events: list[tuple[bool, str | None, list[str], str, int]],
    cuts: list[int],
    at_line_ends: list[bool],
) -> None:
    """Reads that end where an event does take the shortcuts (one event, or whole events split
    at their blank lines); any other read, and a byte at a time, the buffered search."""
    stream = "".join(
        (": c" + end if comment else "")
        + (f"event: {name}{end}" if name is not None else "")
        + "".join(f"data: {line}{end}" for line in data)
        + end * (1 + blanks)
        for comment, name, data, end, blanks in events
    ).encode()
    # Reads end anywhere, and often at a line's end, as a provider flushing lines would make
    # them (a read may then end with an event's blank line and the next one's first).
    ends = [i + 1 for i, byte in enumerate(stream) if byte == 10]
    ends = [end for n, end in enumerate(ends) if at_line_ends[n % len(at_line_ends)]]
    bounds = sorted({0, len(stream), *ends, *(c for c in cuts if c < len(stream))})
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    decoder, byte_by_byte = SSEDecoder(), SSEDecoder()
    together = [e for read in reads for e in decoder.feed(read)] + decoder.flush()
    apart = [e for i in range(len(stream)) for e in byte_by_byte.feed(stream[i : i + 1])]
    apart += byte_by_byte.flush()
    assert [(e.raw, e.event, e.data) for e in together] == [(e.raw, e.event, e.data) for e in apart]
    # Each read of whole events alone, as a provider sends them, reads the same too.
    whole = [e.raw for e in apart]
    one_each = SSEDecoder()
    assert [e.raw for raw in whole for e in one_each.feed(raw)] == whole
