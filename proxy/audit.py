"""The audit trail: every trip, kill, resume, budget change and webhook attempt, who and when.

Embedded mode keeps the last ``MAX_EVENTS`` of each tenant in memory (and appends every event to
a JSONL file when one is configured); Redis mode appends to one capped Redis Stream per tenant,
shared by every replica. Each tenant has its own cap, so one tenant's flood of refusals cannot
push another tenant's records out. An event Redis does not take is kept in memory (the last
``MAX_UNWRITTEN``) and written back, in order, when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proxy.telemetry.logs import event

MAX_EVENTS = 10_000  # per tenant (events of no tenant count as one more)
# Events kept while Redis is away: an outage of minutes at a high trip rate, in a few MB.
MAX_UNWRITTEN = 5_000
RETRY_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 3.0

if TYPE_CHECKING:
    from proxy.pipeline.bus import TripEvent, TripListener
    from proxy.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str  # trip, kill, resume, extend, create, webhook
    task: str
    actor: str  # "tripwire" for detectors, else the token subject
    tenant: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> AuditEvent:
        return cls(**json.loads(text))


class AuditLog(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None:
        """Writes what it still holds, within a bounded time."""
        ...

    async def record(self, event: AuditEvent) -> None: ...

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """Newest first; ``tenant`` None means every tenant."""
        ...


def _at(event: AuditEvent) -> float:
    return event.at


def _matches(event: AuditEvent, tenant: str | None, task: str | None) -> bool:
    return (tenant is None or event.tenant == tenant) and (task is None or event.task == task)


class MemoryAuditLog:
    def __init__(self, path: Path | None = None) -> None:
        self.by_tenant: dict[str | None, deque[AuditEvent]] = {}
        self.path = path

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def record(self, event: AuditEvent) -> None:
        events = self.by_tenant.get(event.tenant)
        if events is None:
            events = self.by_tenant[event.tenant] = deque(maxlen=MAX_EVENTS)
        events.append(event)
        if self.path is not None:
            line = event.to_json() + "\n"
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:  # type: ignore[union-attr]
            file.write(line)

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        if tenant is not None:
            trails = [self.by_tenant.get(tenant) or deque()]
        else:
            trails = list(self.by_tenant.values())
        newest_first = heapq.merge(*(reversed(t) for t in trails), key=_at, reverse=True)
        return list(itertools.islice((e for e in newest_first if _matches(e, tenant, task)), limit))


class RedisAuditLog:
    """Appends to a capped Redis Stream. An event that cannot be written is kept, and a
    background writer retries every ``retry_interval`` seconds, oldest first; until the ones
    kept are written, new events queue behind them so the stream keeps their order."""

    def __init__(
        self,
        client: Any,
        key: str,
        metrics: Metrics | None = None,
        *,
        max_unwritten: int = MAX_UNWRITTEN,
        retry_interval: float = RETRY_INTERVAL_S,
    ) -> None:
        self.client = client
        self.key = key  # events of no tenant; each tenant's go to ``<key>:tenant:<name>``
        self._tenants_key = f"{key}:tenants"
        self._known_tenants: set[str] = set()
        self.metrics = metrics
        self.max_unwritten = max_unwritten
        self.retry_interval = retry_interval
        # Each with its JSON, made once: the stream holds exactly that text, which is how
        # ``list`` recognises an event written back while it was reading.
        self._unwritten: deque[tuple[AuditEvent, str]] = deque()
        self._writing: AuditEvent | None = None
        self._failing = False
        self._dropped = 0
        self._written_back = 0
        self._closed = False
        self._stopping: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    async def start(self) -> None:
        self._closed = False
        if self._writer is None:
            self._stopping = asyncio.Event()
            self._writer = asyncio.create_task(self._write_back())

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if writer is not None:
                    assert self._stopping is not None
                    self._stopping.set()
                    await writer  # it tries once more before it ends
                elif self._unwritten:
                    await self._flush()
        self._closed = True
        if self._dropped:
            self._report_dropped()
        if self._unwritten:
            event(
                "audit_events_lost",
                logging.ERROR,
                backend="redis",
                count=len(self._unwritten),
                first_at=self._unwritten[0][0].at,
            )

    async def record(self, event: AuditEvent) -> None:
        payload = event.to_json()
        if self._unwritten:
            self._keep(event, payload)
            return
        try:
            await self._write(event.tenant, payload)
        except Exception as error:  # whatever Redis raised, the event must not be lost
            self._failed(error)
            self._keep(event, payload)

    def _stream(self, tenant: str | None) -> str:
        # Tenant names are checked when a token is verified (letters, digits, "_.-").
        return self.key if tenant is None else f"{self.key}:tenant:{tenant}"

    async def _write(self, tenant: str | None, payload: str) -> None:
        if tenant is not None and tenant not in self._known_tenants:
            # Listed so that a global admin's read finds every tenant's stream.
            await self.client.sadd(self._tenants_key, tenant)
            self._known_tenants.add(tenant)
        await self.client.xadd(
            self._stream(tenant), {"event": payload}, maxlen=MAX_EVENTS, approximate=True
        )

    def _keep(self, entry: AuditEvent, payload: str) -> None:
        if self._closed:  # a trip's write that failed during shutdown: nothing would retry it
            event("audit_events_lost", logging.ERROR, backend="redis", count=1, first_at=entry.at)
            return
        if len(self._unwritten) >= self.max_unwritten:
            oldest, _ = self._unwritten.popleft()
            if oldest is not self._writing:  # that one is on its way to Redis all the same
                self._dropped += 1
        self._unwritten.append((entry, payload))

    def _failed(self, error: Exception) -> None:
        if self.metrics is not None:
            self.metrics.state_errors.labels("redis", "audit").inc()
        if not self._failing:
            # Once per outage; the type alone, as a message may carry the server's address.
            event(
                "audit_write_failed",
                logging.ERROR,
                backend="redis",
                error=type(error).__name__,
                kept_up_to=self.max_unwritten,
            )
        self._failing = True

    def _report_dropped(self) -> None:
        # Once per burst, when it is over: only then is the count known.
        event(
            "audit_events_dropped",
            logging.ERROR,
            backend="redis",
            dropped=self._dropped,
            kept_up_to=self.max_unwritten,
        )
        self._dropped = 0

    async def _write_back(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.retry_interval)
            if self._unwritten:
                await self._flush()

    async def _flush(self) -> None:
        """Writes the events kept, oldest first, until Redis fails again or none is left."""
        while self._unwritten:
            entry, payload = self._unwritten[0]
            self._writing = entry
            try:
                await self._write(entry.tenant, payload)
            except Exception as error:
                self._failed(error)
                if not self._unwritten or self._unwritten[0][0] is not entry:
                    self._dropped += 1  # a full queue let it go, counting on this write
                return
            finally:
                self._writing = None
            # Unless a full queue dropped it meanwhile, it is still the oldest.
            if self._unwritten and self._unwritten[0][0] is entry:
                self._unwritten.popleft()
            self._written_back += 1
        if self._failing:
            event("audit_written_back", logging.WARNING, backend="redis", count=self._written_back)
        if self._dropped:
            self._report_dropped()
        self._failing = False
        self._written_back = 0

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        # Taken before the read: one written back meanwhile is then in the stream or here.
        unwritten = list(self._unwritten)
        if tenant is not None:
            # The tenant's own stream, and the shared one, where trails written before
            # streams were kept per tenant still are.
            streams = [self._stream(tenant), self.key]
        else:
            names = sorted(await self.client.smembers(self._tenants_key))
            streams = [self.key, *(self._stream(name) for name in names)]
        found: list[list[AuditEvent]] = []
        seen: set[str] = set()
        for stream in streams:
            trail: list[AuditEvent] = []
            for _, fields in await self.client.xrevrange(stream, count=MAX_EVENTS):
                entry = AuditEvent.from_json(fields["event"])
                if _matches(entry, tenant, task):
                    trail.append(entry)
                    seen.add(fields["event"])
                    if len(trail) >= limit:
                        break
            found.append(trail)
        kept = [e for e, payload in reversed(unwritten) if payload not in seen]
        found.append([e for e in kept if _matches(e, tenant, task)])
        newest_first = heapq.merge(*found, key=_at, reverse=True)
        return list(itertools.islice(newest_first, limit))


def trip_recorder(audit: AuditLog) -> TripListener:
    """A trip listener that writes each trip to the audit trail, off the request's path."""
    pending: set[asyncio.Task[None]] = set()

    async def write(entry: AuditEvent) -> None:
        # Nobody awaits this task: a failure is logged here, or asyncio would print it as a
        # traceback and nothing else would tell of the lost event.
        try:
            await audit.record(entry)
        except Exception as error:
            event(
                "audit_record_failed",
                logging.ERROR,
                task=entry.task,
                action=entry.action,
                error=type(error).__name__,
            )

    def record(happened: TripEvent) -> None:
        trip = happened.trip
        entry = AuditEvent(
            action="kill" if happened.action == "kill" else "trip",
            task=happened.task,
            actor="tripwire",
            tenant=happened.tenant,
            detail=trip.detail,
            data={"reason": str(trip.reason), "agent": happened.agent, "figures": trip.figures},
        )
        task = asyncio.get_running_loop().create_task(write(entry))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return record
