"""JSON on the call path: orjson where it reads and writes the same as the standard library,
the standard library where orjson would refuse what it accepts.

Reading: orjson first. What it refuses (``NaN``, lone surrogates, UTF-16, integers past 64
bits, nesting past its limit) is read again by ``json``, so a body is accepted or refused
exactly as before, with the same error. Writing: orjson's compact UTF-8 (``{"a":1}``), which
every provider reads as ``json.dumps`` would have written it; integers past 64 bits fall back
to ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Log lines: numpy figures as numbers and keys of any type as strings, as ``json`` wrote them;
# dataclasses and dates through ``default`` (``str``), as before.
_LOG_OPTIONS = (
    orjson.OPT_SERIALIZE_NUMPY
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def loads(data: bytes | bytearray | str) -> Any:
    """``json.loads``, faster: raises what ``json.loads`` raises for what it refuses."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def loads_or_none(data: bytes | bytearray | str) -> Any:
    """``loads``, or None for what it refuses: a stream event's payload, read on every event,
    one call deep."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def dumps(value: Any) -> bytes:
    """A request or answer body Tripwire writes itself."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, read by the fallback above
        return json.dumps(value).encode()


def dumps_line(value: Any) -> bytes:
    """A log line's JSON: anything ``json.dumps(default=str)`` would write, written."""
    return orjson.dumps(value, default=str, option=_LOG_OPTIONS)
