"""The audit trail through a Redis outage: an event Redis cannot take is kept, written back
once and in order with its own timestamp when Redis answers, shown by ``list`` meanwhile, and
never surfaces as an unretrieved task exception."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from proxy import audit as audit_module
from proxy.audit import AuditEvent, RedisAuditLog, trip_recorder
from proxy.detectors.base import Trip, TripReason
from proxy.telemetry.logs import LOGGER_NAME
from proxy.telemetry.record import TripEvent
from tests.admin.conftest import wait_for
from tests.harness import MockProviderThread, running
from tests.redis_server import RedisServer

UNRETRIEVED = "exception was never retrieved"


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [r.fields for r in self.records if r.getMessage() == name]  # type: ignore[attr-defined]

    def unretrieved(self) -> list[str]:
        return [r.getMessage() for r in self.records if UNRETRIEVED in r.getMessage()]


@pytest.fixture
def logged() -> Iterator[Collected]:
    """Tripwire's log events and asyncio's complaints, whatever logging setup ran before."""
    handler = Collected()
    loggers = [logging.getLogger(LOGGER_NAME), logging.getLogger("asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, since the test stops it; its data outlive a restart, as a
    production one's would."""
    redis_server = RedisServer(
        tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always"
    )
    yield redis_server
    redis_server.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(
        server.url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
    )
    yield connection
    await connection.aclose()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the running loop's exception handler, unretrieved task exceptions among it."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


def stream(server: RedisServer, key: str) -> list[AuditEvent]:
    """The stream as written, oldest first, read with a client of the test's own."""
    reader = redis.Redis(port=server.port, decode_responses=True)
    try:
        return [AuditEvent.from_json(fields["event"]) for _, fields in reader.xrange(key)]
    finally:
        reader.close()


def a_kill(task: str) -> TripEvent:
    trip = Trip(TripReason.MAX_CALLS, {"max_calls": 1, "calls": 2})
    return TripEvent(task, "planner", None, trip, "kill")


async def until(predicate: Any) -> Any:
    """``predicate()`` once it is true, or its last value after 5 s."""
    for _ in range(250):
        if value := predicate():
            return value
        await asyncio.sleep(0.02)
    return predicate()


async def test_a_trip_recorded_while_redis_is_down_is_written_back_once(
    server: RedisServer, client: Any, loop_errors: list[dict[str, Any]], logged: Collected
) -> None:
    key = f"tw-{uuid.uuid4().hex[:8]}:audit"
    audit = RedisAuditLog(client, key, retry_interval=0.05)
    await audit.start()
    listener = trip_recorder(audit)
    try:
        server.stop()
        before = time.time()
        listener(a_kill("report-7"))
        listener(a_kill("report-8"))
        assert await until(lambda: audit.unwritten == 2)
        await asyncio.sleep(0.2)  # a few retries fail while Redis is away
        assert audit.unwritten == 2
        restarted = time.time()
        server.start()
        assert await until(lambda: audit.unwritten == 0)
    finally:
        await audit.close()

    written = stream(server, key)
    assert [(e.action, e.task) for e in written] == [("kill", "report-7"), ("kill", "report-8")]
    assert all(before <= e.at < restarted for e in written)  # when it tripped, not when written
    assert written[0].actor == "tripwire" and written[0].data["reason"] == "max_calls"
    gc.collect()
    assert not loop_errors and not logged.unretrieved()
    assert len(logged.named("audit_write_failed")) == 1  # once per outage, not per retry
    assert logged.named("audit_written_back") == [{"backend": "redis", "count": 2}]
    assert not logged.named("audit_events_lost")


async def test_the_events_kept_are_bounded_and_a_drop_burst_is_logged_once(
    server: RedisServer, client: Any, logged: Collected
) -> None:
    key = f"tw-{uuid.uuid4().hex[:8]}:audit"
    audit = RedisAuditLog(client, key, max_unwritten=5, retry_interval=0.05)
    await audit.start()
    try:
        server.stop()
        for n in range(12):
            await audit.record(AuditEvent("kill", f"t{n}", "tripwire"))
        assert audit.unwritten == 5
        server.start()
        assert await until(lambda: audit.unwritten == 0)
    finally:
        await audit.close()

    assert [e.task for e in stream(server, key)] == ["t7", "t8", "t9", "t10", "t11"]
    dropped = logged.named("audit_events_dropped")
    assert [(d["dropped"], d["kept_up_to"]) for d in dropped] == [(7, 5)]
    assert logged.named("audit_written_back") == [{"backend": "redis", "count": 5}]


async def test_list_shows_the_events_kept_and_each_once_after_the_write_back(
    server: RedisServer, client: Any
) -> None:
    key = f"tw-{uuid.uuid4().hex[:8]}:audit"
    audit = RedisAuditLog(client, key)  # not started: only close writes back here
    await audit.record(AuditEvent("create", "a", "alice", at=100.0))
    server.stop()
    await audit.record(AuditEvent("kill", "a", "tripwire", at=200.0))
    await audit.record(AuditEvent("trip", "b", "tripwire", at=300.0))
    server.start()
    await audit.record(AuditEvent("resume", "a", "alice", at=400.0))  # queued behind the rest
    assert audit.unwritten == 3

    assert [(e.action, e.at) for e in await audit.list()] == [
        ("resume", 400.0),
        ("trip", 300.0),
        ("kill", 200.0),
        ("create", 100.0),
    ]
    assert [e.action for e in await audit.list(task="a", limit=2)] == ["resume", "kill"]

    await audit.close()
    assert audit.unwritten == 0
    assert [e.at for e in stream(server, key)] == [100.0, 200.0, 300.0, 400.0]
    assert [e.at for e in await audit.list()] == [400.0, 300.0, 200.0, 100.0]


async def test_close_gives_up_in_bounded_time_when_redis_does_not_answer(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, logged: Collected
) -> None:
    monkeypatch.setattr(audit_module, "CLOSE_TIMEOUT_S", 0.5)
    slow = aioredis.Redis.from_url(server.url, decode_responses=True, socket_timeout=30)
    audit = RedisAuditLog(slow, f"tw-{uuid.uuid4().hex[:8]}:audit", retry_interval=0.05)
    await audit.start()
    stopped: int | None = None
    try:
        server.stop()
        await audit.record(AuditEvent("kill", "t", "tripwire"))
        server.start()
        assert server.process is not None
        stopped = server.process.pid
        os.kill(stopped, signal.SIGSTOP)  # takes connections, answers nothing
        started = time.monotonic()
        await audit.close()
        assert time.monotonic() - started < 2
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await slow.aclose()
    assert audit.unwritten == 1
    assert [e["count"] for e in logged.named("audit_events_lost")] == [1]


def test_a_task_killed_in_fail_open_mode_while_redis_is_down_is_in_the_trail(
    server: RedisServer, mock: MockProviderThread, logged: Collected
) -> None:
    prefix = f"tw-{uuid.uuid4().hex[:8]}"
    task = f"job-{uuid.uuid4().hex[:8]}"
    state = {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": prefix,
        "on_state_error": "open",
        "redis_timeout": 0.5,
    }
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Task-Id": task, "Authorization": "Bearer sk-test"}
    with (
        running(mock, state=state, policy={"defaults": {"max_calls": 1}}) as proxy,
        httpx.Client(base_url=proxy.base_url, timeout=10) as http,
    ):
        server.stop()
        before = time.time()
        assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        killed = http.post("/v1/chat/completions", json=body, headers=headers)
        assert killed.status_code == 403, killed.text  # over max_calls
        # The trip's write has been tried (and failed) before Redis comes back.
        assert wait_for(lambda: logged.named("audit_write_failed") or logged.unretrieved())
        assert not logged.unretrieved()
        restarted = time.time()
        server.start()
        written = wait_for(lambda: stream(server, f"{prefix}:audit"), timeout=10)
        metrics = http.get("/metrics").text

    assert [(e.action, e.task, e.data["reason"]) for e in written] == [("kill", task, "max_calls")]
    assert before <= written[0].at < restarted
    assert 'tripwire_state_backend_errors_total{backend="redis",operation="audit"}' in metrics
    assert not logged.unretrieved()


async def test_each_tenant_keeps_its_own_records_in_redis(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real cap is 10,000 per tenant; the same code path with a smaller one.
    monkeypatch.setattr(audit_module, "MAX_EVENTS", 50)
    key = f"tw-{uuid.uuid4().hex[:8]}:audit"
    audit = RedisAuditLog(client, key)
    await audit.record(AuditEvent("kill", "acme/job", "tripwire", tenant="acme", detail="kept"))
    await audit.record(AuditEvent("trip", "lone", "tripwire", detail="no tenant"))
    for n in range(400):  # another tenant's refusals flood its own stream only
        await audit.record(AuditEvent("trip", f"noisy/{n}", "tripwire", tenant="noisy"))
    [kept] = await audit.list(tenant="acme")
    assert kept.detail == "kept"
    assert [e.detail for e in await audit.list(tenant="noisy", limit=1)] == [""]
    newest = await audit.list(limit=500)
    assert {"acme/job", "lone"} <= {e.task for e in newest}
    assert newest[0].task == "noisy/399"
    assert [e.at for e in newest] == sorted((e.at for e in newest), reverse=True)
