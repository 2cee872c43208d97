"""A task that loops through the proxy is killed, and its owner's webhook hears about it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from proxy.app import AUDIT, LEDGER
from proxy.audit import AuditEvent
from proxy.auth import mint
from proxy.escalation import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.escalation.receiver import Receiver
from tests.harness import ProxyThread

SECRET = "s3cret"
JWT_KEY = "k" * 32  # shorter HMAC keys raise a warning, an error here
MakeProxy = Callable[..., ProxyThread]
MakeReceiver = Callable[..., Receiver]


def chat(proxy: ProxyThread, headers: dict[str, str], turn: int) -> tuple[int, float]:
    """One Chat Completions call answered "same" by the mock: (status, seconds it took)."""
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"again {turn}"}]}
    ).encode()
    request = urllib.request.Request(
        proxy.openai_url + "/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "x-mock-reply": "same", **headers},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    return status, time.monotonic() - started


def loop_until_killed(proxy: ProxyThread, headers: dict[str, str]) -> list[tuple[int, float]]:
    """Three identical answers trip the kill; the fourth call is refused."""
    results = [chat(proxy, headers, turn) for turn in range(4)]
    assert [status for status, _ in results] == [200, 200, 200, 403]
    return results


def owned_task(proxy: ProxyThread, owner: str) -> str:
    task = f"job-{uuid.uuid4().hex[:8]}"
    app = proxy._app
    assert app is not None
    proxy.call(app[LEDGER].create(task, tenant=None, owner=owner, overrides={}))
    return task


def webhook_records(proxy: ProxyThread, task: str, count: int, timeout: float = 5.0) -> list[Any]:
    """The task's webhook audit records, oldest first, once there are ``count`` of them."""
    app = proxy._app
    assert app is not None
    deadline = time.monotonic() + timeout
    while True:
        events: list[AuditEvent] = proxy.call(app[AUDIT].list(task=task))
        found = [e for e in reversed(events) if e.action == "webhook"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def escalation(receiver: Receiver, **settings: Any) -> dict[str, Any]:
    owners = {"ops": {"url": receiver.url + "/hooks/tripwire"}}
    return {"owners": owners, "secret": SECRET, **settings}


def test_owner_named_in_a_token_gets_a_signed_event(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver()
    proxy = make_proxy(
        auth={"mode": "jwt", "hs256_secret": JWT_KEY}, escalation=escalation(receiver)
    )
    token = mint(
        JWT_KEY, {"task": "job-1", "agent": "writer", "tenant": "acme", "owner": "ops"}, 600
    )
    loop_until_killed(proxy, {"X-Tripwire-Token": token})

    [delivery] = receiver.wait_for(1)
    assert delivery.path == "/hooks/tripwire"
    assert verify_signature(
        SECRET,
        delivery.headers[TIMESTAMP_HEADER],
        delivery.body,
        delivery.headers[SIGNATURE_HEADER],
        tolerance_s=60,
    )
    stamp, signature = delivery.headers[TIMESTAMP_HEADER], delivery.headers[SIGNATURE_HEADER]
    assert not verify_signature("wrong", stamp, delivery.body, signature)
    assert not verify_signature(SECRET, stamp, delivery.body + b" ", signature)
    sent = delivery.json()
    assert delivery.headers[EVENT_ID_HEADER] == sent["id"]
    assert uuid.UUID(sent["id"])
    assert sent["event"] == "tripwire.trip"
    assert sent["at"].endswith("Z")
    assert (sent["task"], sent["tenant"], sent["agent"]) == ("acme/job-1", "acme", "writer")
    assert (sent["action"], sent["reason"]) == ("kill", "repeat_output")
    assert sent["detail"].startswith("agent writer repeated the same output 3 times")
    assert sent["figures"]["repeats"] == 3
    figures = sent["task_figures"]
    assert figures["calls"] == 3
    assert figures["tokens_used"] > 0
    assert figures["agents"] == ["writer"]
    assert set(figures) == {"tokens_used", "cost_usd", "calls", "hops", "agents"}
    assert [p["text"] for p in sent["previews"]] == ["same"] * 3
    assert all(p["agent"] == "writer" and p["fingerprint"] for p in sent["previews"])
    actions = sent["actions"]
    # Tenant tasks hold a slash, which must not split the admin API's path.
    assert actions["resume"]["url"] == "/tripwire/v1/tasks/acme%2Fjob-1/resume"
    assert actions["resume"]["method"] == "POST"
    assert actions["resume"]["body"]["limits"]["max_tokens"] > figures["tokens_used"]
    assert actions["extend"]["url"] == "/tripwire/v1/tasks/acme%2Fjob-1/extend"
    assert actions["abort"]["url"] == "/tripwire/v1/tasks/acme%2Fjob-1/kill"

    [record] = webhook_records(proxy, "acme/job-1", 1)
    assert (record.detail, record.actor, record.tenant) == ("delivered", "tripwire", "acme")
    assert record.data["attempt"] == 1
    assert record.data["status"] == 200
    assert record.data["url"] == receiver.url + "/..."  # a path may hold a credential
    assert record.data["event_id"] == sent["id"]


def test_the_resume_link_resumes_the_task(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver()
    proxy = make_proxy(
        auth={"mode": "jwt", "hs256_secret": JWT_KEY},
        escalation=escalation(receiver),
    )
    agent = mint(JWT_KEY, {"task": "job-2", "tenant": "acme", "owner": "ops"}, 600)
    loop_until_killed(proxy, {"X-Tripwire-Token": agent})
    resume = receiver.wait_for(1)[0].json()["actions"]["resume"]

    admin = mint(JWT_KEY, {"sub": "owner", "role": "admin"}, 600)
    request = urllib.request.Request(
        proxy.base_url + resume["url"],
        data=json.dumps(resume["body"]).encode(),
        method=resume["method"],
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert chat(proxy, {"X-Tripwire-Token": agent, "x-mock-reply": "fresh"}, 9)[0] == 200


def test_a_500_is_retried_and_every_attempt_is_audited(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver([500])
    proxy = make_proxy(escalation=escalation(receiver, attempts=3))
    task = owned_task(proxy, "ops")
    loop_until_killed(proxy, {"X-Task-Id": task})

    first, second = receiver.wait_for(2)
    assert second.at > first.at
    assert first.body == second.body
    assert first.headers[EVENT_ID_HEADER] == second.headers[EVENT_ID_HEADER]
    for delivery in (first, second):
        stamp, signature = delivery.headers[TIMESTAMP_HEADER], delivery.headers[SIGNATURE_HEADER]
        assert verify_signature(SECRET, stamp, delivery.body, signature)
    failed, delivered = webhook_records(proxy, task, 2)
    assert (failed.detail, failed.data["attempt"], failed.data["status"]) == (
        "failed: HTTP 500",
        1,
        500,
    )
    assert (delivered.detail, delivered.data["attempt"], delivered.data["status"]) == (
        "delivered",
        2,
        200,
    )
    assert failed.data["event_id"] == delivered.data["event_id"] == first.json()["id"]
    time.sleep(0.2)
    assert len(receiver.requests) == 2


def test_slack_owner_gets_plain_text_with_the_links(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver()
    hook = receiver.url + "/services/T000/B000/credential"
    proxy = make_proxy(
        escalation={
            "owners": {"chat": {"url": hook, "format": "slack"}},
            "public_url": "https://tripwire.example.com/",
        }
    )
    task = owned_task(proxy, "chat")
    loop_until_killed(proxy, {"X-Task-Id": task})

    [delivery] = receiver.wait_for(1)
    assert SIGNATURE_HEADER not in delivery.headers  # no secret configured
    message = delivery.json()
    assert list(message) == ["text"]
    text = message["text"]
    assert text.startswith(f"Tripwire stopped task `{task}` (repeat_output): agent ")
    links = f"https://tripwire.example.com/tripwire/v1/tasks/{task}"
    assert f"Resume: POST {links}/resume " in text
    assert f"Extend: POST {links}/extend " in text
    assert f"Abort: POST {links}/kill " in text
    assert "> " in text  # the last outputs

    [record] = webhook_records(proxy, task, 1)
    assert record.detail == "delivered"
    # A Slack webhook's path is its credential: it stays out of the audit trail.
    assert "credential" not in json.dumps(record.data)


@pytest.mark.parametrize("owner", ["nobody", "url"])
def test_an_owner_not_configured_is_not_called(
    make_proxy: MakeProxy, make_receiver: MakeReceiver, owner: str
) -> None:
    receiver = make_receiver()
    proxy = make_proxy(escalation=escalation(receiver))
    # A URL as owner is only honoured with allow_any_url.
    task = owned_task(proxy, receiver.url + "/direct" if owner == "url" else owner)
    loop_until_killed(proxy, {"X-Task-Id": task})

    [record] = webhook_records(proxy, task, 1)
    assert record.detail == "failed: owner not configured"
    time.sleep(0.2)
    assert receiver.requests == []


def test_a_task_without_owner_sends_nothing(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver()
    proxy = make_proxy(escalation=escalation(receiver))
    task = f"job-{uuid.uuid4().hex[:8]}"
    loop_until_killed(proxy, {"X-Task-Id": task})
    time.sleep(0.3)
    assert receiver.requests == []
    assert webhook_records(proxy, task, 0) == []


def test_a_receiver_that_never_answers_does_not_slow_the_agent(
    make_proxy: MakeProxy, make_receiver: MakeReceiver
) -> None:
    receiver = make_receiver(hang=True)
    proxy = make_proxy(escalation=escalation(receiver, timeout="10s", attempts=1))
    task = owned_task(proxy, "ops")
    results = loop_until_killed(proxy, {"X-Task-Id": task})

    receiver.wait_for(1)  # the delivery is under way, and hangs
    tripping, refused = results[2][1], results[3][1]
    assert tripping < 1.0
    assert refused < 1.0
    # Later refusals stay prompt while the delivery is still waiting for an answer.
    status, took = chat(proxy, {"X-Task-Id": task}, 5)
    assert (status, took < 1.0) == (403, True)
    assert webhook_records(proxy, task, 0, timeout=0) == []
