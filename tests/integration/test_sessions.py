"""Sessions of untagged traffic, on both ledgers with a moved clock and end to end: a looping
untagged client is stopped, then served again once its session is over."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from proxy.session.base import Ledger
from proxy.session.sessions import is_session, session_id
from tests.contract.sdk import ask, errors_of
from tests.harness import ProxyThread
from tests.integration.test_ledgers import Clock, ledger

__all__ = ["ledger"]  # the fixture that runs the ledger tests on both backends

START = 1_800_000_000.0
GAP = 300.0


@pytest.fixture
def clock() -> Clock:
    """The ledgers' shared clock (``ledger`` comes from the ledger protocol tests), started at a
    time a session id can name."""
    return Clock(START)


@pytest.fixture
def client() -> str:
    return "key:" + uuid.uuid4().hex[:12]


async def test_a_session_lasts_while_calls_come_within_the_gap(
    ledger: Ledger, clock: Clock, client: str
) -> None:
    first = await ledger.open_session(client, GAP)
    for _ in range(20):  # an hour and a half of calls four minutes apart: one session
        clock.now += 240
        assert await ledger.open_session(client, GAP) == first
    clock.now += GAP + 1
    after_gap = await ledger.open_session(client, GAP)
    assert after_gap.start > first.start and after_gap.ends is None
    assert session_id(client, after_gap.start) != session_id(client, first.start)


async def test_a_killed_session_ends_after_its_cooldown_while_calls_keep_coming(
    ledger: Ledger, clock: Clock, client: str
) -> None:
    span = await ledger.open_session(client, GAP)
    ends = await ledger.end_session(client, span.start, 60)
    assert ends == pytest.approx(START + 60)
    # A second mark (another replica refusing the same session) does not push the end later.
    clock.now += 30
    assert await ledger.end_session(client, span.start, 60) == pytest.approx(START + 60)
    again = await ledger.open_session(client, GAP)
    assert again.start == span.start and again.ends == pytest.approx(START + 60)
    clock.now = START + 61
    fresh = await ledger.open_session(client, GAP)
    assert fresh.start > span.start and fresh.ends is None
    # The old session cannot be marked any more: its client has moved on.
    assert await ledger.end_session(client, span.start, 60) is None


async def test_a_session_that_ends_within_its_first_second_gets_a_new_id(
    ledger: Ledger, clock: Clock, client: str
) -> None:
    span = await ledger.open_session(client, 0.5)
    clock.now += 0.6
    assert (await ledger.open_session(client, 0.5)).start == span.start + 1


def test_session_ids_are_readable_and_recognised() -> None:
    task = session_id("key:9f3a1c0e22b4", int(START))
    assert task == "key:9f3a1c0e22b4@20270115T080000Z"
    assert is_session(task) and not is_session("key:9f3a1c0e22b4")


# -- end to end -----------------------------------------------------------------------------

SESSIONS = {"sessions": {"idle_gap": "1s", "cooldown": "1s"}}


def test_a_looping_untagged_client_is_stopped_then_served_again(make_proxy: Any) -> None:
    """The compressed day: sessions of one second stand for minutes. The loop is killed in its
    session, every call is refused until the cool-down is over, and then traffic flows again
    in a new session, for as long as the client keeps calling."""
    proxy: ProxyThread = make_proxy(tagging=SESSIONS)
    key = "sk-untagged-" + uuid.uuid4().hex[:6]
    loop = {"x-mock-reply": "same"}
    tasks = [
        ask("chat", proxy.base_url, api_key=key, prompt=f"again {n}", headers=loop)
        for n in range(3)
    ]
    session = tasks[0].headers["x-tripwire-task"]
    assert session.startswith("key:") and is_session(session)
    assert tasks[2].headers["x-tripwire-task"] == session  # the third repeat kills it
    with pytest.raises(errors_of("chat").PermissionDeniedError) as killed:
        ask("chat", proxy.base_url, api_key=key, headers=loop)
    message = killed.value.message
    assert "accepted again" in message and "X-Task-Id" in message
    with pytest.raises(errors_of("chat").PermissionDeniedError):
        ask("chat", proxy.base_url, api_key=key)
    served = []
    deadline = time.monotonic() + 6
    while len(served) < 3 and time.monotonic() < deadline:
        time.sleep(0.4)
        try:
            served.append(ask("chat", proxy.base_url, api_key=key).headers["x-tripwire-task"])
        except errors_of("chat").PermissionDeniedError:
            assert not served, "a new session was refused"
    assert len(served) == 3 and served[0] != session
    view = proxy.task(session)
    assert view is not None and view.killed is not None


def test_untagged_callers_without_a_credential_never_share_a_task(make_proxy: Any) -> None:
    proxy: ProxyThread = make_proxy(tagging=SESSIONS)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{proxy.base_url}/v1/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200
    task = reply.headers["x-tripwire-task"]
    assert task.startswith("peer:127.0.0.1@"), task
    # A header cannot choose another caller's identity.
    forged = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        json=body,
        headers={"X-Forwarded-For": "10.0.0.9"},
        timeout=10,
    )
    assert forged.headers["x-tripwire-task"] == task


def test_tagged_tasks_keep_their_id(make_proxy: Any) -> None:
    proxy: ProxyThread = make_proxy(tagging=SESSIONS)
    reply = ask("chat", proxy.base_url, headers={"X-Task-Id": "job-7"})
    assert reply.headers["x-tripwire-task"] == "job-7"


def test_an_untagged_token_holder_is_named_by_the_verified_subject(make_proxy: Any) -> None:
    from tests.admin.conftest import SECRET, token

    proxy: ProxyThread = make_proxy(auth={"mode": "jwt", "hs256_secret": SECRET})
    signed = token(sub="billing-service")
    reply = ask("chat", proxy.base_url, headers={"X-Tripwire-Token": signed})
    task = reply.headers["x-tripwire-task"]
    assert task.startswith("sub:billing-service@") and is_session(task)
