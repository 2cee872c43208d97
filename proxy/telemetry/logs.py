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

# Loggers of the libraries under the server: their records carry raw request bytes (a header
# line aiohttp could not parse is quoted whole, ``Authorization`` included), so they are
# rewritten before they reach a handler.
LIBRARY_LOGGERS = ("aiohttp", "asyncio")


class LibraryRecords(logging.Filter):
    """Turns a library's record into a Tripwire log line that names what went wrong, never
    what the request carried: the message template without its arguments, the exception only
    by its type and the line of its description that names the fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The message template without its arguments: a library may format request data in.
        fields: dict[str, Any] = {"logger": record.name, "detail": str(record.msg)}
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = type(error).__name__
            fields["reason"] = _first_description_line(error)
        record.msg, record.args = "server_error", None
        record.exc_info = record.exc_text = None
        record.stack_info = None
        record.fields = fields
        return True


def _first_description_line(error: BaseException) -> str:
    """aiohttp's parser errors read ``400, message:\n  Invalid header value char:\n\n
    b'Authorization: Bearer ...'``: only the line that describes the fault is safe to keep."""
    text = str(getattr(error, "message", None) or error)
    for line in text.splitlines():
        line = line.strip().rstrip(":")
        if line and not line.startswith(("b'", 'b"', "^")) and ":" not in line:
            if not line.endswith(", message"):  # the status prefix: "400, message:"
                return line[:200]
    return ""


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
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library_handler = QueueHandler(records)
        library_handler.addFilter(LibraryRecords())
        library.handlers[:] = [library_handler]
        library.setLevel(logging.WARNING)
        library.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})
