"""One JSON object per log line, so trips and refusals can be searched by task and reason.

Only fields passed explicitly are written: request headers never reach a log line, so
``Authorization`` and provider keys cannot leak through logging.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

LOGGER_NAME = "tripwire"
log = logging.getLogger(LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level event key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()} {pairs}".rstrip()


_listener: QueueListener | None = None


def setup_logging(level: str, format_: str = "json") -> None:
    """Log lines are formatted and written by a thread, so a slow stderr (a pipe to a log
    shipper that lags) never blocks the event loop."""
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format_ == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = QueueListener(records, handler)
    _listener.start()
    atexit.register(_listener.stop)
    log.handlers[:] = [QueueHandler(records)]
    log.setLevel(level)
    log.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})
