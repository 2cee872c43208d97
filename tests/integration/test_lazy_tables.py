"""The tokenizer and the price tables load only when a call needs them, never at start-up:
the prices on the first call, for the dollar figures; the tokenizer on the first call a token
or dollar budget applies to (without a budget it is never loaded: the provider's usage books
every call). That first load does not loosen the budget, and a load that fails refuses the
calls that need it. The server never imports the price dataset itself (its compact index is
built in a child process). Each case runs in a fresh interpreter, where nothing else has
loaded them yet."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

SCRIPT = """
import asyncio, json, sys
import aiohttp
from aiohttp import web
from proxy.app import FORWARDER, build_app
from proxy.mock_provider.app import start_mock_provider
from proxy import tokens
from tests.harness import proxy_config

async def main():
    mock, _, mock_url = await start_mock_provider("127.0.0.1", 0)
    config = proxy_config(mock_url, policy=json.loads(sys.argv[1]))
    app = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.sleep(0.5)  # a start-up load has the time to finish
    def state():
        return [tokens.loaded(), app[FORWARDER].prices.loaded, "genai_prices.data" in sys.modules]

    seen = {"idle": state()}
    async with aiohttp.ClientSession() as client:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
            seen["status"] = r.status
    seen["after"] = state()
    await runner.cleanup()
    await mock.cleanup()
    print(json.dumps(seen))

asyncio.run(main())
"""


def _run(policy: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(policy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.timeout(90)
def test_without_a_budget_only_the_prices_load_on_the_first_call() -> None:
    seen = _run({})
    assert seen["idle"] == [False, False, False]
    assert seen["status"] == 200
    assert seen["after"] == [False, True, False]


@pytest.mark.timeout(90)
def test_a_budget_loads_the_tokenizer_with_the_first_call_it_applies_to() -> None:
    seen = _run({"defaults": {"max_cost_usd": 5}})
    assert seen["idle"] == [False, False, False]
    assert seen["status"] == 200
    assert seen["after"] == [True, True, False]


# Concurrent first calls of one task under a token budget, each asking for far more output
# than the budget holds, sent while the tokenizer has not loaded yet. ``tokens._load`` is
# held until all of them have arrived, and counts how often it runs.
FIRST_CALLS = """
import asyncio, json, sys, threading
import aiohttp
from aiohttp import web
from proxy.app import build_app
from proxy.mock_provider.app import start_mock_provider
from proxy import tokens
from tests.harness import proxy_config

BUDGET, CALLS = 1000, 16
release, loads = threading.Event(), []
real_load = tokens._load

def held_load():
    loads.append(1)
    release.wait(30)
    if sys.argv[1] == "fail":
        raise OSError("the rank file cannot be read")
    return real_load()

tokens._load = held_load

async def main():
    mock, provider, mock_url = await start_mock_provider("127.0.0.1", 0)
    policy = {"rules": [{"match": {"task": "budget-*"}, "limits": {"max_tokens": BUDGET}}]}
    app = build_app(proxy_config(mock_url, policy=policy))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    seen = {"loaded_idle": tokens.loaded()}
    prompt = "Summarise the release notes of the proxy in one paragraph. " * 20
    openai = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    anthropic = {**openai, "max_tokens": 4096}
    long_reply = {"x-mock-reply-tokens": "5000", "Authorization": "Bearer sk"}

    async def call(client, n, task):
        path, body = ("/v1/messages", anthropic) if n % 2 else ("/v1/chat/completions", openai)
        headers = {**long_reply, "X-Task-Id": task, "anthropic-version": "2023-06-01"}
        async with client.post(base + path, json=body, headers=headers) as answer:
            return answer.status, await answer.json()

    async with aiohttp.ClientSession() as client:
        budgeted = [asyncio.ensure_future(call(client, n, "budget-1")) for n in range(CALLS)]
        await asyncio.sleep(0.3)
        # No budget applies to this one: it is answered while the load is still held.
        seen["unbudgeted"] = (await call(client, 0, "other-1"))[0]
        seen["pending_while_loading"] = sum(not f.done() for f in budgeted)
        before = provider.total_usage
        release.set()
        answers = await asyncio.gather(*budgeted)
        seen["statuses"] = sorted({status for status, _ in answers})
        seen["bodies"] = [body for _, body in answers[:2]]
        after = provider.total_usage
        seen["budgeted_billed"] = (
            after.prompt_tokens + after.completion_tokens
            - before.prompt_tokens - before.completion_tokens
        )
        seen["forwarded"] = len(provider.requests)
        if sys.argv[1] == "fail":
            tokens._load = real_load  # the next call that needs it loads it again
            seen["retried"] = (await call(client, 0, "budget-2"))[0]
    seen["loads"] = len(loads)
    await runner.cleanup()
    await mock.cleanup()
    print(json.dumps(seen))

asyncio.run(main())
"""


def _first_calls(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALLS, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.timeout(90)
def test_first_calls_under_a_budget_share_one_load_and_stay_within_the_budget() -> None:
    seen = _first_calls("load")
    assert seen["loaded_idle"] is False
    assert seen["unbudgeted"] == 200
    assert seen["pending_while_loading"] == 16  # they waited for the tokenizer
    assert seen["loads"] == 1
    assert set(seen["statuses"]) <= {200, 403, 429}
    assert 200 in seen["statuses"]
    assert 0 < seen["budgeted_billed"] <= 1000


@pytest.mark.timeout(90)
def test_a_tokenizer_that_cannot_load_refuses_the_calls_that_need_it() -> None:
    seen = _first_calls("fail")
    assert seen["unbudgeted"] == 200
    assert seen["statuses"] == [503]
    assert seen["forwarded"] == 1  # only the unbudgeted call reached the provider
    openai, anthropic = seen["bodies"]
    assert openai["error"]["code"] == "tripwire_tokenizer_unavailable"
    assert "could not load its tokenizer" in openai["error"]["message"]
    assert anthropic["type"] == "error"
    assert anthropic["error"]["type"] == "overloaded_error"
    assert "could not load its tokenizer" in anthropic["error"]["message"]
    assert seen["retried"] == 200
    assert seen["loads"] == 1  # the retry ran the real load, not the failing one


# A stream without a budget that breaks off: its settle counts the deltas seen and estimates
# the prompt, which needs the tokenizer no call had loaded. The load is held for 3 s (released
# from another thread) while another call is sent: it must be answered meanwhile, the load
# running off the event loop, and the broken stream is booked once the load is done.
BROKEN_STREAM = """
import asyncio, json, sys, threading, time
import aiohttp
from aiohttp import web
from proxy.app import LEDGER, build_app
from proxy.mock_provider.app import start_mock_provider
from proxy import tokens
from tests.harness import proxy_config

release, loads = threading.Event(), []
real_load = tokens._load

def held_load():
    loads.append(threading.current_thread() is threading.main_thread())
    release.wait(30)
    return real_load()

tokens._load = held_load

async def main():
    mock, _, mock_url = await start_mock_provider("127.0.0.1", 0)
    app = build_app(proxy_config(mock_url, policy={}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Plan the release."}]}
    seen = {}
    async with aiohttp.ClientSession() as client:
        async def broken():
            headers = {"X-Task-Id": "broken-1", "x-mock-reset": "mid", "Authorization": "Bearer sk"}
            async with client.post(url, json={**body, "stream": True}, headers=headers) as answer:
                return answer.status, (await answer.read()).decode()

        threading.Timer(3.0, release.set).start()
        stream = asyncio.ensure_future(broken())
        while not loads and not stream.done():
            await asyncio.sleep(0.01)
        sent = time.monotonic()
        headers = {"X-Task-Id": "other-1", "Authorization": "Bearer sk"}
        async with client.post(url, json=body, headers=headers) as answer:
            seen["other"] = answer.status
        seen["other_s"] = time.monotonic() - sent
        seen["released_before_other"] = release.is_set()
        status, text = await stream
        seen["stream"] = status
        seen["stream_broken_notice"] = "error" in text
    view = await app[LEDGER].get("broken-1")
    seen["booked_tokens"] = view.tokens_used if view is not None else None
    seen["loads_on_the_event_loop"] = loads
    await runner.cleanup()
    await mock.cleanup()
    print(json.dumps(seen))

asyncio.run(main())
"""


@pytest.mark.timeout(90)
def test_a_broken_stream_without_a_budget_loads_the_tokenizer_off_the_event_loop() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_STREAM], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["loads_on_the_event_loop"] == [False]  # one load, in a worker thread
    assert seen["other"] == 200
    assert seen["released_before_other"] is False  # answered while the load was held
    assert seen["other_s"] < 2.0
    assert seen["stream"] == 200
    assert seen["stream_broken_notice"]
    assert seen["booked_tokens"] > 0  # the prompt estimated and the deltas seen, counted
