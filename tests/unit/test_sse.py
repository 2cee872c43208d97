from proxy.server.sse import SSEDecoder


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
