"""The escalator on its own: retries, final answers, bounds, signatures, owner resolution."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.audit import AuditEvent, MemoryAuditLog
from proxy.config import Escalation, StateSettings
from proxy.detectors.base import Trip, TripReason
from proxy.escalation import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Escalator,
    sign,
    slack_text,
    verify_signature,
)
from proxy.session.memory import MemoryLedger
from proxy.telemetry.record import TripEvent
from tests.escalation.receiver import Receiver

MakeReceiver = Callable[..., Receiver]
TRIP = Trip(TripReason.MAX_CALLS, {"max_calls": 5})


@pytest.fixture
async def ledger() -> AsyncIterator[MemoryLedger]:
    state = MemoryLedger(StateSettings())
    await state.start()
    await state.create("t1", tenant="acme", owner="ops", overrides={})
    yield state
    await state.close()


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


def settings(url: str, **extra: Any) -> Escalation:
    return Escalation.model_validate({"owners": {"ops": {"url": url}}, "secret": "s", **extra})


async def escalate(
    escalator: Escalator, *events: TripEvent, close: bool = True
) -> list[AuditEvent]:
    await escalator.start()
    for happened in events:
        escalator.listener(happened)
    await escalator.wait()
    if close:
        await escalator.close()
    return list(reversed(await escalator.audit.list()))


def kill(task: str = "t1", action: str = "kill") -> TripEvent:
    return TripEvent(task, "planner", "acme", TRIP, action)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_retries_stop_after_the_configured_attempts(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver([500, 503, 502, 500])
    escalator = Escalator(settings(receiver.url, attempts=3), ledger, audit, base_delay=0.01)
    records = await escalate(escalator, kill())
    assert len(receiver.requests) == 3
    assert [r.detail for r in records] == [
        "failed: HTTP 500",
        "failed: HTTP 503",
        "failed: HTTP 502",
    ]
    assert [r.data["attempt"] for r in records] == [1, 2, 3]
    assert [r.data["final"] for r in records] == [False, False, True]


async def test_backoff_doubles(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver([500, 500])
    escalator = Escalator(
        settings(receiver.url, attempts=3), ledger, audit, base_delay=0.1, jitter=False
    )
    await escalate(escalator, kill())
    first, second, third = (r.at for r in receiver.wait_for(3))
    assert 0.1 <= second - first < 0.19
    assert 0.2 <= third - second < 0.35


@pytest.mark.parametrize(("status", "sent"), [(404, 1), (400, 1), (429, 2), (200, 1)])
async def test_only_429_and_5xx_are_retried(
    make_receiver: MakeReceiver,
    ledger: MemoryLedger,
    audit: MemoryAuditLog,
    status: int,
    sent: int,
) -> None:
    receiver = make_receiver([status])
    escalator = Escalator(settings(receiver.url), ledger, audit, base_delay=0.01)
    records = await escalate(escalator, kill())
    assert len(receiver.requests) == sent
    assert records[-1].data["final"] is True
    assert records[0].data["status"] == status


async def test_an_unreachable_receiver_is_retried_and_recorded(
    ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    origin = f"http://127.0.0.1:{free_port()}"
    url = origin + "/hook/path-secret?token=hidden"
    escalator = Escalator(settings(url, attempts=2), ledger, audit, base_delay=0.01)
    records = await escalate(escalator, kill())
    assert len(records) == 2
    assert all(r.detail.startswith("failed: ClientConnectorError") for r in records)
    assert all(r.data["status"] is None for r in records)
    # A webhook's path and query may hold its credential: only the origin is recorded.
    assert records[0].data["url"] == origin + "/..."


async def test_a_slow_receiver_times_out(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver(hang=True)
    escalator = Escalator(
        settings(receiver.url, attempts=1, timeout=0.2), ledger, audit, base_delay=0.01
    )
    started = time.monotonic()
    [record] = await escalate(escalator, kill())
    assert time.monotonic() - started < 2
    assert record.detail == "failed: no answer within 0.2s"


async def test_pending_deliveries_are_bounded(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver(hang=True)
    escalator = Escalator(settings(receiver.url, timeout=30), ledger, audit, max_pending=2)
    await escalator.start()
    for _ in range(3):
        escalator.listener(kill())
    assert escalator.pending == 2
    await asyncio.to_thread(receiver.wait_for, 2)  # off the loop the deliveries run on
    await escalator.close(grace=0)
    assert escalator.pending == 0
    [dropped] = await audit.list()
    assert dropped.action == "webhook"
    assert dropped.detail == "failed: dropped, 2 deliveries already pending"


async def test_observe_trips_are_escalated_only_when_asked(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver()
    default = Escalator(settings(receiver.url), ledger, audit)
    assert await escalate(default, kill(action="observe")) == []
    both = Escalator(settings(receiver.url), ledger, audit, actions=("kill", "observe"))
    [record] = await escalate(both, kill(action="observe"))
    assert record.detail == "delivered"
    assert receiver.requests[0].json()["action"] == "observe"


async def test_a_url_owner_needs_allow_any_url(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver()
    await ledger.create("t2", tenant=None, owner=receiver.url + "/direct", overrides={})
    refused = Escalator(settings("http://127.0.0.1:9"), ledger, audit)
    [record] = await escalate(refused, kill("t2"))
    assert record.detail == "failed: owner not configured"
    assert receiver.requests == []

    allowed = Escalator(Escalation(allow_any_url=True), ledger, audit)
    records = await escalate(allowed, kill("t2"))
    assert records[-1].detail == "delivered"
    [delivery] = receiver.requests
    assert delivery.path == "/direct"
    assert SIGNATURE_HEADER not in delivery.headers


async def test_nothing_is_sent_without_escalation_settings(
    ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    escalator = Escalator(Escalation(), ledger, audit)
    assert not escalator.enabled
    assert await escalate(escalator, kill()) == []


def test_the_listener_never_raises_outside_a_loop(
    ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    escalator = Escalator(settings("http://127.0.0.1:9"), ledger, audit)
    escalator.listener(kill())
    assert escalator.pending == 0


async def test_a_ledger_failure_is_contained(audit: MemoryAuditLog) -> None:
    class Broken(MemoryLedger):
        async def get(self, task: str) -> Any:
            raise ConnectionError("state backend down")

    escalator = Escalator(settings("http://127.0.0.1:9"), Broken(StateSettings()), audit)
    assert await escalate(escalator, kill()) == []


def test_signatures() -> None:
    body = b'{"event": "tripwire.trip"}'
    header = sign("s", "1700000000", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    at = 1700000000.0
    assert verify_signature("s", 1700000000, body, header, now=at)
    assert verify_signature("s", "1700000000", body.decode(), header, now=at)
    assert not verify_signature("s", "1700000001", body, header, now=at)
    assert not verify_signature("other", "1700000000", body, header, now=at)
    assert not verify_signature("s", "1700000000", body, None, now=at)
    assert verify_signature("s", "1700000000", body, header, tolerance_s=300, now=1700000100)
    assert not verify_signature("s", "1700000000", body, header, tolerance_s=300, now=1700000400)
    assert not verify_signature("s", "soon", body, header, tolerance_s=300)


def test_signatures_are_refused_outside_the_replay_window_by_default() -> None:
    body = b'{"event": "tripwire.trip"}'
    old = str(int(time.time()) - 3600)
    assert not verify_signature("s", old, body, sign("s", old, body))
    fresh = str(int(time.time()))
    assert verify_signature("s", fresh, body, sign("s", fresh, body))
    assert verify_signature("s", old, body, sign("s", old, body), tolerance_s=None)


def test_the_timestamp_cannot_move_the_signed_split() -> None:
    # "<ts>.<body>" is what is signed: a timestamp holding a dot could claim part of the body.
    body = b'0.{"event": "x"}'
    header = sign("s", "1700000000", body)
    assert not verify_signature("s", "1700000000.0", b'{"event": "x"}', header, tolerance_s=None)
    assert not verify_signature("s", " 1700000000", body, header, tolerance_s=None)
    assert not verify_signature("s", "-1700000000", body, header, tolerance_s=None)


def test_bad_input_gives_false_never_an_exception() -> None:
    body = b"{}"
    stamp = str(int(time.time()))
    good = sign("s", stamp, body)
    assert not verify_signature("s", stamp, body, "sha256=é" + good[8:])
    assert not verify_signature("s", stamp, "ü\udcff", good)
    arabic_indic = "".join(chr(0x660 + int(digit)) for digit in stamp)  # digits, not ASCII
    assert not verify_signature("s", arabic_indic, body, good)
    assert not verify_signature("", stamp, body, sign("", stamp, body))
    assert not verify_signature("s", stamp, None, good)  # type: ignore[arg-type]
    assert not verify_signature("s", 1.5, body, good)  # type: ignore[arg-type]
    assert not verify_signature("s", stamp, body, 7)  # type: ignore[arg-type]


async def test_slack_text_keeps_task_text_plain(ledger: MemoryLedger) -> None:
    await ledger.create("<!channel>", tenant=None, owner="ops", overrides={})
    view = await ledger.get("<!channel>")
    assert view is not None
    escalator = Escalator(settings("http://127.0.0.1:9"), ledger, MemoryAuditLog())
    payload = escalator.payload(kill("<!channel>"), view, "id-1", 0.0)
    assert payload["at"] == "1970-01-01T00:00:00.000Z"
    text = slack_text(payload)
    assert "<!channel>" not in text.split("\n")[0]
    assert "&lt;!channel&gt;" in text
    assert "/tripwire/v1/tasks/%3C%21channel%3E/resume" in text


async def test_close_lets_a_delivery_under_way_finish(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    receiver = make_receiver([500])
    escalator = Escalator(settings(receiver.url), ledger, audit, base_delay=0.05)
    await escalator.start()
    escalator.listener(kill())
    await asyncio.sleep(0)
    await escalator.close(grace=5)
    assert [r.detail for r in reversed(await audit.list())] == ["failed: HTTP 500", "delivered"]
    assert receiver.requests[0].headers[TIMESTAMP_HEADER]


async def test_a_tenant_whose_owner_hangs_cannot_starve_another_tenants_kills(
    make_receiver: MakeReceiver, ledger: MemoryLedger, audit: MemoryAuditLog
) -> None:
    hanging, healthy = make_receiver(hang=True), make_receiver()
    await ledger.create("slow-1", tenant="slowco", owner="slow", overrides={})
    await ledger.create("fast-1", tenant="acme", owner="ops", overrides={})
    owners = {"slow": {"url": hanging.url}, "ops": {"url": healthy.url}}
    escalator = Escalator(
        Escalation.model_validate({"owners": owners, "secret": "s", "timeout": 30}),
        ledger,
        audit,
        max_pending=50,
        max_pending_per_tenant=10,
    )
    await escalator.start()
    for _ in range(40):  # the slow tenant's kills pile up behind its hanging owner
        escalator.listener(TripEvent("slow-1", "a", "slowco", TRIP, "kill"))
    assert escalator.pending == 10
    # Its owner gets at most its own share of the sockets.
    await asyncio.to_thread(hanging.wait_for, 8, 15.0)
    await asyncio.sleep(0.2)
    assert len(hanging.requests) == 8
    escalator.listener(TripEvent("fast-1", "a", "acme", TRIP, "kill"))
    await asyncio.to_thread(healthy.wait_for, 1, 15.0)
    await escalator.close(grace=1)
    dropped = [e for e in await audit.list(tenant="slowco") if "dropped" in e.detail]
    assert len(dropped) == 30
    assert dropped[0].detail == "failed: dropped, 10 of its tenant already pending"
    [delivered] = await audit.list(tenant="acme")
    assert delivered.detail == "delivered"


async def test_one_tenants_flood_keeps_another_tenants_audit_records() -> None:
    log = MemoryAuditLog()
    await log.record(AuditEvent("kill", "acme/job", "tripwire", tenant="acme", detail="kept"))
    for n in range(10_250):
        await log.record(AuditEvent("trip", f"noisy/{n}", "tripwire", tenant="noisy"))
    [kept] = await log.list(tenant="acme")
    assert kept.detail == "kept"
    assert len(await log.list(tenant="noisy", limit=20_000)) == 10_000
    everything = await log.list(limit=3)
    assert [e.task for e in everything] == ["noisy/10249", "noisy/10248", "noisy/10247"]
