from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from proxy.telemetry.logs import LOGGER_NAME


class LogLines:
    """Every record of the ``tripwire`` logger while a test runs, whatever handlers an earlier
    ``setup_logging`` installed."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []

    def events(self, name: str) -> list[dict[str, object]]:
        return [
            dict(getattr(record, "fields", {}) or {})
            for record in self.records
            if record.getMessage() == name
        ]


class _Collect(logging.Handler):
    def __init__(self, sink: LogLines) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.records.append(record)


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    logger = logging.getLogger(LOGGER_NAME)
    sink = LogLines()
    handler = _Collect(sink)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def task(request: pytest.FixtureRequest) -> str:
    """A task id of this test's own, from its name and parameters."""
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:100]
