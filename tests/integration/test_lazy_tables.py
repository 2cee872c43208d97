"""The tokenizer and the price tables load only when a call needs them, or at start-up when
the policy sets a token or dollar budget: without a budget the tokenizer is never loaded (the
provider's usage books every call), and the prices are, on the first call, for the dollar
figures. The server never imports the price dataset itself (its compact index is built in a
child process). Each case runs in a fresh interpreter, where nothing else has loaded them yet."""

from __future__ import annotations

import json
import subprocess
import sys

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
def test_a_budget_loads_the_tables_at_start_up() -> None:
    seen = _run({"defaults": {"max_cost_usd": 5}})
    assert seen["idle"] == [True, True, False]
    assert seen["status"] == 200
