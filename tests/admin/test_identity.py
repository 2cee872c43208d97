"""Identities a client cannot forge: every task and agent id, whatever its source, reaches the
ledger in one canonical form that never holds the "/" Tripwire puts between a tenant and its
task, so no caller can spend, kill or read another tenant's task; and a tenant's calls never go
out with the operator's shared provider key unless the configuration says they may."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxy.config import load_config
from tests.admin.conftest import SECRET, Admin, admin_token, token
from tests.contract.sdk import ask, errors_of
from tests.harness import MockProviderThread, ProxyThread

TWO_CALLS = {"rules": [{"match": {"task": "*"}, "limits": {"max_calls": 2}}]}


@pytest.fixture
def proxy(make_proxy: Any, state: dict[str, Any]) -> ProxyThread:
    return make_proxy(  # type: ignore[no-any-return]
        auth={"mode": "jwt", "hs256_secret": SECRET}, state=state, policy=TWO_CALLS
    )


def call(
    proxy: ProxyThread, bearer: str, headers: dict[str, str] | None = None, root: str = ""
) -> Any:
    return ask(
        "chat",
        (root or proxy.base_url),
        api_key=bearer,
        headers=headers or {},
        prompt=f"work {uuid.uuid4().hex}",
    )


def test_a_traceparent_cannot_reach_into_a_tenants_task(proxy: ProxyThread, admins: Any) -> None:
    """The reported attack: a valid token of no tenant sends a traceparent whose "trace id" is
    ``acme/<acme's task>``. It must neither spend nor kill acme's task."""
    victim = "q3report_" + "a" * 18
    assert len(f"acme/{victim}") == 32
    acme = token(tenant="acme", task=victim, agent="writer")
    outsider = token(sub="mallory", agent="intruder")
    forged = {"traceparent": f"00-acme/{victim}-0000000000000001-01"}
    for _ in range(2):  # with acme's two calls, past its limit were these acme's calls
        reply = call(proxy, outsider, forged)
        assert not reply.headers["x-tripwire-task"].startswith("acme/")
    # acme's task is untouched: both its calls go through.
    for _ in range(2):
        assert call(proxy, acme).headers["x-tripwire-task"] == f"acme/{victim}"
    root: Admin = admins(proxy, admin_token())
    assert root.task(f"acme/{victim}").json()["calls"] == 2
    assert root.task(f"acme/{victim}").json()["state"] == "active"
    acme_admin: Admin = admins(proxy, admin_token(tenant="acme", sub="acme-ops"))
    assert acme_admin.audit() == []


@pytest.mark.parametrize(
    "source",
    ["x-task-id", "litellm-header", "url", "task-claim", "traceparent-upper"],
)
def test_no_client_chosen_id_reaches_a_tenants_namespace(
    proxy: ProxyThread, admins: Any, source: str
) -> None:
    victim = f"job-{uuid.uuid4().hex[:8]}"
    outsider = token(sub="mallory")
    headers: dict[str, str] = {}
    root_url = ""
    if source == "x-task-id":
        headers = {"X-Task-Id": f"acme/{victim}"}
    elif source == "litellm-header":
        headers = {"x-litellm-session-id": f"acme/{victim}"}
    elif source == "url":
        root_url = f"{proxy.base_url}/t/{quote(f'acme/{victim}', safe='')}"
    elif source == "task-claim":
        outsider = token(sub="mallory", task=f"acme/{victim}")
    else:
        headers = {"traceparent": f"00-ACME/{victim.upper()}-0000000000000001-01"}
    tasks = {call(proxy, outsider, headers, root_url).headers["x-tripwire-task"] for _ in range(2)}
    assert all("/" not in task for task in tasks), tasks
    acme = token(tenant="acme", task=victim)
    for _ in range(2):
        assert call(proxy, acme).status == 200
    root: Admin = admins(proxy, admin_token())
    assert root.task(f"acme/{victim}").json()["calls"] == 2


def test_ids_take_one_canonical_form_and_long_ones_are_refused(proxy: ProxyThread) -> None:
    bearer = token(sub="someone")
    odd = 'a}:s {"x"}'
    reply = call(proxy, bearer, {"X-Task-Id": odd, "X-Agent-Id": odd})
    canonical = "a%7D:s%20%7B%22x%22%7D"
    assert reply.headers["x-tripwire-task"] == canonical
    assert reply.headers["x-tripwire-agent"] == canonical
    # The escaped form read back is a different id, never the same task.
    again = call(proxy, bearer, {"X-Task-Id": canonical})
    assert again.headers["x-tripwire-task"] == "a%257D:s%2520%257B%2522x%2522%257D"
    # From the URL, decoded first: the same id as the same text in a header.
    root_url = f"{proxy.base_url}/t/{quote(odd, safe='')}"
    assert call(proxy, bearer, root=root_url).headers["x-tripwire-task"] == canonical
    accented = call(proxy, bearer, root=f"{proxy.base_url}/t/%C3%A9t%C3%A9")
    assert accented.headers["x-tripwire-task"] == "%C3%A9t%C3%A9"
    for headers in ({"X-Task-Id": "t" * 129}, {"X-Agent-Id": "{" * 50}):
        with pytest.raises(errors_of("chat").BadRequestError) as raised:
            call(proxy, bearer, headers)
        assert "at most 128" in str(raised.value)
    with pytest.raises(errors_of("chat").BadRequestError) as raised:
        call(proxy, token(sub="someone", task="\u00e9" * 100))
    assert "the token's task claim" in str(raised.value)


# -- provider keys per tenant ------------------------------------------------------------------


def keyed_proxy(make_proxy: Any, mock: MockProviderThread, **extra: Any) -> ProxyThread:
    upstreams = {
        "openai": {"base_url": mock.base_url, "api_key": "sk-shared-operator-key"},
        **extra.pop("upstreams", {}),
    }
    return make_proxy(  # type: ignore[no-any-return]
        auth={"mode": "jwt", "hs256_secret": SECRET}, upstreams=upstreams, **extra
    )


def test_a_tenant_without_its_own_key_is_refused_not_given_the_shared_one(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    proxy = keyed_proxy(
        make_proxy, mock, tenants={"acme": {"upstream_keys": {"openai": {"api_key": "sk-acme"}}}}
    )
    with pytest.raises(errors_of("chat").PermissionDeniedError) as raised:
        call(proxy, token(tenant="globex", task="t1"))
    message = str(raised.value)
    assert "tenant 'globex'" in message and "upstream 'openai'" in message
    assert raised.value.response.json()["error"]["code"] == "tripwire_forbidden"
    # The tenant with a key of its own, and a token of no tenant, still go through.
    assert call(proxy, token(tenant="acme", task="t1")).status == 200
    assert call(proxy, token(task="t1")).status == 200


@pytest.mark.parametrize("how", ["tenant", "upstream"])
def test_the_config_may_let_a_tenant_use_the_shared_key(
    make_proxy: Any, mock: MockProviderThread, how: str
) -> None:
    if how == "tenant":
        extra: dict[str, Any] = {"tenants": {"globex": {"use_shared_keys": True}}}
    else:
        extra = {
            "upstreams": {
                "openai": {
                    "base_url": mock.base_url,
                    "api_key": "sk-shared-operator-key",
                    "shared_key_tenants": ["globex"],
                }
            }
        }
    proxy = keyed_proxy(make_proxy, mock, **extra)
    assert call(proxy, token(tenant="globex", task="t1")).status == 200
    with pytest.raises(errors_of("chat").PermissionDeniedError):
        call(proxy, token(tenant="initech", task="t1"))


def test_an_upstream_with_no_shared_key_passes_the_callers_own(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    """Nothing to share, nothing to refuse: the caller's own credentials travel as sent."""
    proxy = make_proxy(auth={"mode": "jwt", "hs256_secret": SECRET})
    reply = httpx.post(
        proxy.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={
            "X-Tripwire-Token": token(tenant="globex", task="t1"),
            "Authorization": "Bearer sk-globex-own",
        },
        timeout=10,
    )
    assert reply.status_code == 200


def test_shared_key_settings_load() -> None:
    config = load_config(
        None,
        upstreams={"openai": {"base_url": "http://x", "shared_key_tenants": ["a"]}},
        tenants={"b": {"use_shared_keys": True}},
    )
    assert config.upstreams["openai"].shared_key_tenants == ["a"]
    assert config.tenants["b"].use_shared_keys
