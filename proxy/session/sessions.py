"""Sessions of untagged traffic: a client that names no task is one task per session, not one
task for ever.

A call whose task comes from a fallback (a credential's hash, a token's subject, the peer
address) belongs to its client's current session. A session ends after ``idle_gap`` without a
call, and a killed session ends ``cooldown`` after its kill even while the client keeps
calling; the next call then starts a new session with fresh limits and loop windows. Limits
and detectors apply per session, so a real loop is still stopped, and a service that adopts
Tripwire without tags is never locked out for longer than the cool-down.

A session's task id is its client's id and its start, ``key:9f3a1c0e22b4@20261204T234500Z``
(UTC, whole seconds; bumped by a second if a session ended within the second it started), so
every replica forms the same id: the record it is read from lives in the ledger (a dict here,
a hash per client in Redis, changed by the two Lua scripts below).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

SESSION_MARK = "@"
_STAMP = "%Y%m%dT%H%M%SZ"
_SESSION_ID = re.compile(r"@\d{8}T\d{6}Z$")
# A client's record outlives its idle gap by this much, so a new session's start (whole
# seconds) never repeats the last one's.
RECORD_MARGIN_S = 60.0


def session_id(base: str, start: int) -> str:
    return f"{base}{SESSION_MARK}{time.strftime(_STAMP, time.gmtime(start))}"


def is_session(task: str) -> bool:
    """Whether a task id names a session of untagged traffic."""
    return _SESSION_ID.search(task) is not None


@dataclass(frozen=True, slots=True)
class Span:
    """The session a call belongs to: its start (epoch seconds) and, once it was killed, when
    it ends."""

    start: int
    ends: float | None = None


@dataclass(slots=True)
class _Record:
    start: int
    last: float
    ends: float | None = None


class SessionBook:
    """The sessions of one process's clients (the memory ledger's, and the Redis ledger's
    while Redis is unreachable in open mode)."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def open(self, base: str, now: float, idle_gap: float) -> Span:
        record = self._records.get(base)
        if (
            record is not None
            and (record.ends is None or now < record.ends)
            and now - record.last <= idle_gap
        ):
            record.last = max(record.last, now)
            self._records.move_to_end(base)
            return Span(record.start, record.ends)
        start = int(now)
        if record is not None and start <= record.start:
            start = record.start + 1
        self._records[base] = _Record(start, now)
        self._records.move_to_end(base)
        self._forget(now, idle_gap)
        return Span(start)

    def end(self, base: str, start: int, now: float, cooldown: float) -> float | None:
        """Mark the killed session to end ``cooldown`` from ``now``; the first mark wins.
        None when the client has moved on to another session already."""
        record = self._records.get(base)
        if record is None or record.start != start:
            return None
        if record.ends is None:
            record.ends = now + cooldown
        return record.ends

    def saved(self, limit: int) -> list[dict[str, Any]]:
        """The most recently active clients' records, for the embedded ledger's file."""
        recent = list(self._records.items())[-limit:] if limit > 0 else []
        return [
            {"client": base, "start": r.start, "last": r.last, "ends": r.ends} for base, r in recent
        ]

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Records read back from the file, oldest first as they were written."""
        for entry in saved:
            try:
                ends = entry.get("ends")
                record = _Record(
                    int(entry["start"]), float(entry["last"]), None if ends is None else float(ends)
                )
                base = str(entry["client"])
            except (KeyError, TypeError, ValueError):
                continue
            self._records[base] = record
            self._records.move_to_end(base)
            if len(self._records) > self.max_clients:
                self._records.popitem(last=False)

    def _forget(self, now: float, idle_gap: float) -> None:
        """Clients idle past the gap (plus the margin) are forgotten, oldest first; the dict is
        in last-call order."""
        horizon = now - idle_gap - RECORD_MARGIN_S
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.last > horizon and len(self._records) <= self.max_clients:
                break
            self._records.popitem(last=False)


# KEYS[1] the client's record. ARGV: now ('' = the Redis server's clock), idle gap (s), the
# record's TTL (ms). Returns {start, ends or ''}.
OPEN = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local rec = redis.call('HMGET', KEYS[1], 'start', 'last', 'ends')
local start = tonumber(rec[1])
local last = tonumber(rec[2])
local ends = tonumber(rec[3])
if start and last and (not ends or now < ends) and now - last <= tonumber(ARGV[2]) then
  if now > last then
    redis.call('HSET', KEYS[1], 'last', string.format('%.6f', now))
  end
else
  local fresh = math.floor(now)
  if start and fresh <= start then
    fresh = start + 1
  end
  start = fresh
  ends = nil
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'start', start, 'last', string.format('%.6f', now))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ends then
  return {start, string.format('%.6f', ends)}
end
return {start, ''}
"""

# KEYS[1] the client's record. ARGV: the session's start, now ('' = the server's clock), the
# cool-down (s). Returns when the session ends, or '' when the client is in another session.
END = """
local rec = redis.call('HMGET', KEYS[1], 'start', 'ends')
if tonumber(rec[1]) ~= tonumber(ARGV[1]) then
  return ''
end
if rec[2] then
  return rec[2]
end
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ends = string.format('%.6f', now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'ends', ends)
return ends
"""
