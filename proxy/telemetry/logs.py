"""One JSON object per log line, so trips and refusals can be searched by task and reason.

Only fields passed explicitly are written: request headers never reach a log line, so
``Authorization`` and provider keys cannot leak through logging.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from proxy import jsonio

LOGGER_NAME = "tripwire"
log = logging.getLogger(LOGGER_NAME)
# Lines formatted and not yet written past which new ones are dropped (and counted): a log
# output that stalls must not grow the process without bound.
MAX_PENDING_LINES = 10_000
# How long a line logged on the event loop waits, at most, to be written with the next ones.
# Each wake-up costs the event loop more than the lines it writes: the thread must take the
# interpreter lock from the loop's thread to pick the lines up and again after its write.
WRITE_INTERVAL_S = 0.05


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return self.line(record)[:-1].decode()

    def line(self, record: logging.LogRecord) -> bytes:
        """The record as one line of JSON, newline included."""
        fields = getattr(record, "fields", None)
        error = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(
            record.created,
            record.levelname.lower(),
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
            error,
        )


def json_line(
    created: float,
    level: str,
    message: str,
    fields: dict[str, Any] | None = None,
    error: str | None = None,
) -> bytes:
    entry: dict[str, Any] = {"ts": _timestamp(created), "level": level, "event": message}
    if fields:
        entry.update(fields)
    if error is not None:
        entry["error"] = error
    return jsonio.dumps_line(entry) + b"\n"


_second: list[Any] = [-1, ""]  # the last second formatted, and its text


def _timestamp(created: float) -> str:
    """``2026-12-05T04:31:07.123Z``; the date and time formatted once a second, not per line."""
    second = int(created)
    last = _second
    if second != last[0]:
        last[0], last[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{last[1]}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``time level event key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()} {pairs}".rstrip()


class LineWriter(logging.Handler):
    """Formats each record where it is logged and writes the lines from a thread of its own,
    every line waiting in one write: a slow stderr (a pipe to a log shipper that lags) never
    blocks the event loop, and a busy one costs a write per batch, not per line. The batch goes
    to the file descriptor in one ``os.write`` (the buffered stream would release and retake
    the interpreter lock once per layer)."""

    def __init__(self, stream: IO[str], max_pending: int = MAX_PENDING_LINES) -> None:
        super().__init__()
        self.stream = stream
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: deque[bytes] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._kick_scheduled = False
        self._thread = threading.Thread(target=self._write, name="tripwire-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            if isinstance(formatter, JsonFormatter):
                line = formatter.line(record)
            else:
                line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        self.push(line)

    def push(self, line: bytes) -> None:
        """One formatted line, written with the next batch."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(line)
        if self._kick_scheduled or self._wake.is_set():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._wake.set()
            return
        # Woken at most every WRITE_INTERVAL_S, for every line logged meanwhile: a thread
        # woken per line would cost more than the lines.
        self._kick_scheduled = True
        loop.call_later(WRITE_INTERVAL_S, self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        self._wake.set()

    def _write(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            self._wake.clear()
            batch = [pending.popleft() for _ in range(len(pending))]
            if batch:
                # A closed or broken stderr: there is nothing left to tell it to.
                with contextlib.suppress(Exception):
                    self._out(b"".join(batch))
            if self._stopping and not pending:
                return

    def _out(self, data: bytes) -> None:
        buffer = getattr(self.stream, "buffer", None)
        if buffer is not None:
            self.stream.flush()  # what was printed as text goes first
            try:
                fd = buffer.fileno()
            except (OSError, ValueError):  # an in-memory stream
                buffer.write(data)
                buffer.flush()
                return
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        else:
            self.stream.write(data.decode("utf-8", "replace"))
            self.stream.flush()

    def close(self) -> None:
        """Write what waits, then stop the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        super().close()


class _Library(logging.Handler):
    """A library's records, made safe (``LibraryRecords``) and written by the line writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer
        self.addFilter(LibraryRecords())

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.handle(record)


_writer: LineWriter | None = None


def dropped_lines() -> int:
    """Log lines dropped since start-up (``tripwire_log_lines_dropped_total``)."""
    return _writer.dropped if _writer is not None else 0


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
        quoted = line.startswith(("b'", 'b"', "^"))
        # ", message" ends the status prefix ("400, message:"), not a description.
        if line and not quoted and ":" not in line and not line.endswith(", message"):
            return line[:200]
    return ""


def setup_logging(level: str, format_: str = "json") -> None:
    """Log lines are written by a thread (``LineWriter``), so a slow stderr never blocks the
    event loop."""
    global _writer
    if _writer is not None:
        _writer.close()
    _writer = LineWriter(sys.stderr)
    _writer.setFormatter(JsonFormatter() if format_ == "json" else TextFormatter())
    atexit.register(_writer.close)
    log.handlers[:] = [_writer]
    log.setLevel(level)
    log.propagate = False
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [_Library(_writer)]
        library.setLevel(logging.WARNING)
        library.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        handlers = log.handlers
        writer = _writer
        if (
            writer is not None
            and len(handlers) == 1
            and handlers[0] is writer
            and type(writer.formatter) is JsonFormatter
            and not log.filters
            and not writer.filters
        ):
            # Set up as ``setup_logging`` leaves it: the line is written straight away, with
            # no log record built and passed through the logging machinery (a call's line is
            # logged on every call).
            writer.push(json_line(time.time(), _level_name(level), name, fields))
            return
        # No caller lookup: a line names its event, not the code that logged it.
        record = log.makeRecord(LOGGER_NAME, level, "", 0, name, (), None)
        record.fields = fields
        log.handle(record)


def _level_name(level: int) -> str:
    name = _LEVELS.get(level)
    return name if name is not None else str(logging.getLevelName(level)).lower()


_LEVELS = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
