"""The audit trail: every trip, kill, resume, budget change and webhook attempt, who and when.

Embedded mode keeps the last ``MAX_EVENTS`` in memory (and appends every event to a JSONL file
when one is configured); Redis mode appends to a capped Redis Stream shared by every replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

MAX_EVENTS = 10_000

if TYPE_CHECKING:
    from proxy.telemetry.record import TripEvent, TripListener


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
    async def record(self, event: AuditEvent) -> None: ...

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """Newest first; ``tenant`` None means every tenant."""
        ...


def _matches(event: AuditEvent, tenant: str | None, task: str | None) -> bool:
    return (tenant is None or event.tenant == tenant) and (task is None or event.task == task)


class MemoryAuditLog:
    def __init__(self, path: Path | None = None) -> None:
        self.events: deque[AuditEvent] = deque(maxlen=MAX_EVENTS)
        self.path = path

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)
        if self.path is not None:
            line = event.to_json() + "\n"
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:  # type: ignore[union-attr]
            file.write(line)

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        found = [e for e in reversed(self.events) if _matches(e, tenant, task)]
        return found[:limit]


class RedisAuditLog:
    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    async def record(self, event: AuditEvent) -> None:
        await self.client.xadd(
            self.key, {"event": event.to_json()}, maxlen=MAX_EVENTS, approximate=True
        )

    async def list(
        self, tenant: str | None = None, task: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        found: list[AuditEvent] = []
        entries = await self.client.xrevrange(self.key, count=MAX_EVENTS)
        for _, fields in entries:
            event = AuditEvent.from_json(fields["event"])
            if _matches(event, tenant, task):
                found.append(event)
                if len(found) >= limit:
                    break
        return found


def trip_recorder(audit: AuditLog) -> TripListener:
    """A trip listener that writes each trip to the audit trail, off the request's path."""
    pending: set[asyncio.Task[None]] = set()

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
        task = asyncio.get_running_loop().create_task(audit.record(entry))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return record
