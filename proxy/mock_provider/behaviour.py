"""Control headers that let a test script the mock provider through the proxy.

The proxy forwards request headers unchanged, so a test can decide per request
what the "provider" does without any side channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import unquote

HEADER_REPLY = "x-mock-reply"
HEADER_REPLY_TOKENS = "x-mock-reply-tokens"
HEADER_STATUS = "x-mock-status"
HEADER_MALFORMED = "x-mock-malformed"
HEADER_RESET = "x-mock-reset"
HEADER_CHUNK_DELAY = "x-mock-chunk-delay"
HEADER_CHUNKS = "x-mock-chunks"
HEADER_DELAY = "x-mock-delay"
# Seconds a stream stays open after its last event, as a slow connection close would.
HEADER_LINGER = "x-mock-linger"

CONTROL_HEADERS = (
    HEADER_REPLY,
    HEADER_REPLY_TOKENS,
    HEADER_STATUS,
    HEADER_MALFORMED,
    HEADER_RESET,
    HEADER_CHUNK_DELAY,
    HEADER_CHUNKS,
    HEADER_DELAY,
    HEADER_LINGER,
)

ResetMode = Literal["before", "mid"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class BehaviourError(ValueError):
    """A control header carried a value the mock cannot act on.

    Answered with a 400 so a typo in a test fails loudly instead of silently
    falling back to the default behaviour.
    """

    def __init__(self, header: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {header} header {value!r}: {reason}")
        self.header = header
        self.value = value


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    """What the mock does for one request.

    `reply` and `reply_tokens` are exclusive: when neither is set the reply is
    derived from the last user message.
    """

    reply: str | None = None
    reply_tokens: int | None = None
    status: int | None = None
    malformed: bool = False
    reset: ResetMode | None = None
    chunk_delay: float = 0.0
    chunks: int | None = None
    delay: float = 0.0
    linger: float = 0.0


def parse_behaviour(
    headers: Mapping[str, str], defaults: MockBehaviour | None = None
) -> MockBehaviour:
    """Overlay the control headers present in `headers` on `defaults`.

    Header names are matched case-insensitively whatever mapping is passed.
    Raises BehaviourError on the first unusable value.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    behaviour = defaults if defaults is not None else MockBehaviour()

    reply_raw = lowered.get(HEADER_REPLY)
    tokens_raw = lowered.get(HEADER_REPLY_TOKENS)
    if reply_raw is not None and tokens_raw is not None:
        raise BehaviourError(
            HEADER_REPLY_TOKENS, tokens_raw, f"cannot be combined with {HEADER_REPLY}"
        )
    if reply_raw is not None:
        behaviour = replace(behaviour, reply=unquote(reply_raw), reply_tokens=None)
    if tokens_raw is not None:
        count = _parse_int(HEADER_REPLY_TOKENS, tokens_raw, minimum=0)
        behaviour = replace(behaviour, reply=None, reply_tokens=count)

    status_raw = lowered.get(HEADER_STATUS)
    if status_raw is not None:
        status = _parse_int(HEADER_STATUS, status_raw, minimum=200)
        if status != 200 and not 400 <= status <= 599:
            raise BehaviourError(HEADER_STATUS, status_raw, "expected 200 or a 4xx/5xx status")
        # 200 means "behave normally", which lets a test override a default error.
        behaviour = replace(behaviour, status=None if status == 200 else status)

    malformed_raw = lowered.get(HEADER_MALFORMED)
    if malformed_raw is not None:
        behaviour = replace(behaviour, malformed=_parse_flag(HEADER_MALFORMED, malformed_raw))

    reset_raw = lowered.get(HEADER_RESET)
    if reset_raw is not None:
        behaviour = replace(behaviour, reset=_parse_reset(reset_raw))

    delay_raw = lowered.get(HEADER_DELAY)
    if delay_raw is not None:
        behaviour = replace(behaviour, delay=_parse_seconds(HEADER_DELAY, delay_raw))

    chunk_delay_raw = lowered.get(HEADER_CHUNK_DELAY)
    if chunk_delay_raw is not None:
        chunk_delay = _parse_seconds(HEADER_CHUNK_DELAY, chunk_delay_raw)
        behaviour = replace(behaviour, chunk_delay=chunk_delay)

    linger_raw = lowered.get(HEADER_LINGER)
    if linger_raw is not None:
        behaviour = replace(behaviour, linger=_parse_seconds(HEADER_LINGER, linger_raw))

    chunks_raw = lowered.get(HEADER_CHUNKS)
    if chunks_raw is not None:
        behaviour = replace(behaviour, chunks=_parse_int(HEADER_CHUNKS, chunks_raw, minimum=1))

    return behaviour


def _parse_int(header: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise BehaviourError(header, raw, "expected an integer") from None
    if value < minimum:
        raise BehaviourError(header, raw, f"must be at least {minimum}")
    return value


def _parse_seconds(header: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise BehaviourError(header, raw, "expected a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise BehaviourError(header, raw, "must be a finite, non-negative number")
    return value


def _parse_flag(header: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BehaviourError(header, raw, "expected 1 or 0")


def _parse_reset(raw: str) -> ResetMode | None:
    value = raw.strip().lower()
    if value == "before":
        return "before"
    if value == "mid":
        return "mid"
    if value in ("", "none", "0"):
        return None
    raise BehaviourError(HEADER_RESET, raw, "expected 'before' or 'mid'")
