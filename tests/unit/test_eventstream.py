"""AWS event-stream framing: the sans-IO decoder, and messages botocore's own parser reads."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import EventStreamBuffer

from proxy.providers.bedrock import BedrockAdapter
from proxy.server.eventstream import (
    EventStreamDecoder,
    error_message,
    event_message,
    exception_message,
)

MESSAGES = [
    event_message("messageStart", b'{"role": "assistant"}'),
    event_message("contentBlockDelta", json.dumps({"delta": {"text": "h\u00e9llo"}}).encode()),
    exception_message("throttlingException", b'{"message": "slow down"}'),
    error_message("AccessDeniedException", "no more"),
]
STREAM = b"".join(MESSAGES)


@pytest.mark.parametrize("size", [1, 5, 13, 100, len(STREAM)])
def test_messages_come_out_whole_however_the_bytes_are_split(size: int) -> None:
    decoder = EventStreamDecoder()
    events = [e for i in range(0, len(STREAM), size) for e in decoder.feed(STREAM[i : i + size])]
    events += decoder.flush()
    assert [e.raw for e in events] == MESSAGES  # relayed byte for byte
    assert [e.event for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "exception:throttlingException",
        "exception:AccessDeniedException",
    ]
    assert json.loads(events[1].data)["delta"]["text"] == "h\u00e9llo"
    assert json.loads(events[3].data) == {"message": "no more"}


def test_tripwire_s_messages_pass_botocore_s_crc_checks() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(STREAM)
    parsed = list(buffer)
    assert [m.headers.get(":event-type") for m in parsed[:2]] == [
        "messageStart",
        "contentBlockDelta",
    ]
    assert parsed[3].headers[":error-code"] == "AccessDeniedException"


def test_a_corrupt_message_is_relayed_but_not_read() -> None:
    corrupt = bytearray(MESSAGES[1])
    corrupt[-6] ^= 0xFF  # in the payload: the message CRC no longer matches
    (event,) = EventStreamDecoder().feed(bytes(corrupt))
    assert event.raw == bytes(corrupt) and event.event is None and event.data == ""


def test_an_unfinished_message_is_not_relayed() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(MESSAGES[0][:-3]) == []
    assert decoder.flush() == []


def test_the_converse_tally_reads_text_tool_input_and_the_metadata_usage() -> None:
    adapter = BedrockAdapter()
    info = adapter.parse_request(
        "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse-stream",
        {
            "system": [{"text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [{"text": "Weather?"}, {"image": {}}]},
                {"role": "assistant", "content": [{"toolUse": {"name": "w", "input": {"c": 1}}}]},
                {
                    "role": "user",
                    "content": [{"toolResult": {"content": [{"json": {"t": 20}}]}}],
                },
            ],
            "inferenceConfig": {"maxTokens": 50},
        },
    )
    assert (info.kind, info.stream, info.cap, info.prompt.images) == ("converse", True, 50, 1)
    assert {"Be brief.", "Weather?", "w", '{"c": 1}', '{"t": 20}'} <= set(info.prompt.texts)
    tally = adapter.stream_tally(info)
    decoder = EventStreamDecoder()
    stream = (
        event_message("contentBlockDelta", b'{"contentBlockIndex": 0, "delta": {"text": "Hi"}}')
        + event_message(
            "contentBlockStart",
            b'{"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "w"}}}',
        )
        + event_message(
            "contentBlockDelta", b'{"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}}'
        )
        + event_message(
            "metadata",
            b'{"usage": {"inputTokens": 7, "outputTokens": 3, "cacheReadInputTokens": 2}}',
        )
    )
    for event in decoder.feed(stream):
        tally.feed(event)
    assert tally.final and tally.usage is not None
    assert (tally.usage.input_tokens, tally.usage.output_tokens, tally.usage.cached_tokens) == (
        9,
        3,
        2,
    )
    assert tally.output().text == "Hi" and tally.output().tool_calls == [("w", "{}")]
