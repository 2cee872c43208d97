"""The log line as an operator's log shipper reads it: one JSON object per line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

import pytest

from proxy.telemetry import logs


@contextlib.contextmanager
def logging_to(monkeypatch: pytest.MonkeyPatch, stream: io.TextIOWrapper) -> Iterator[None]:
    """Logging set up as ``tripwire serve`` sets it, on ``stream`` as stderr; undone after."""
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup_logging("INFO")
    try:
        yield
    finally:
        if logs._writer is not None:
            logs._writer.close()
            logs._writer = None
        for name in (logs.LOGGER_NAME, *logs.LIBRARY_LOGGERS):
            logger = logging.getLogger(name)
            logger.handlers[:] = []
            logger.propagate = True
            logger.setLevel(logging.NOTSET)


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    raw = io.BytesIO()
    with logging_to(monkeypatch, io.TextIOWrapper(raw, encoding="utf-8")):
        yield raw


def lines(raw: io.BytesIO) -> list[dict[str, object]]:
    assert logs._writer is not None
    logs._writer.close()  # writes what waits
    return [json.loads(line) for line in raw.getvalue().decode().splitlines()]


def test_an_event_is_one_json_line_with_its_time_level_and_fields(stderr: io.BytesIO) -> None:
    logs.event("call", task="t-1", status=200, cost_usd=0.25)
    logs.event("trip", logging.WARNING, task="t-1", reason="cycle")
    logs.event("hidden", logging.DEBUG, task="t-1")  # below the level: not written
    first, second = lines(stderr)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["ts"]))
    assert first == {**first, "level": "info", "event": "call", "task": "t-1", "status": 200}
    assert first["cost_usd"] == 0.25
    assert second["level"] == "warning" and second["reason"] == "cycle"


def test_a_handler_an_operator_adds_still_sees_every_event(stderr: io.BytesIO) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger(logs.LOGGER_NAME).addHandler(keep)
    logs.event("call", task="t-2")
    assert [r.getMessage() for r in seen] == ["call"]
    assert getattr(seen[0], "fields", None) == {"task": "t-2"}
    [line] = lines(stderr)
    assert line["event"] == "call" and line["task"] == "t-2"


def test_lines_reach_a_pipe_whole_and_in_order_after_what_was_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stderr as a log shipper sees it: a pipe, read while the proxy writes more than it holds;
    text printed before the first event comes first."""
    read_end, write_end = os.pipe()
    received = bytearray()
    reader = threading.Thread(target=_drain, args=(read_end, received))
    reader.start()
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    try:
        with logging_to(monkeypatch, stream):
            print("Tripwire is listening", file=sys.stderr)
            for number in range(3000):  # about 400 KB, several times a pipe's buffer
                logs.event("call", task=f"t-{number}", note="x" * 40)
    finally:  # the writer has written what waited: the reader sees the end of the pipe
        stream.close()
        reader.join(10)
    first, *rest = received.decode().splitlines()
    assert first == "Tripwire is listening"
    assert [json.loads(line)["task"] for line in rest] == [f"t-{n}" for n in range(3000)]


def _drain(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read1(65536):
            into += chunk
