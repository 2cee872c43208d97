"""What tracing costs per call: the tracing addon's hooks driven directly, with spans exported
over OTLP/HTTP to a collector stand-in in another process, against the same hooks with no
export at all.

``python -m bench.tracing [--calls N]`` prints one JSON object: microseconds per call on the
calling thread (the event loop's share) and process CPU per call, export thread included.
Needs the ``otel`` extra (installed with the dev tools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.config import Config, load_config
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Settlement
from proxy.providers import ADAPTERS
from proxy.providers.base import CallInfo, Output, Usage
from proxy.session.base import Settled, TaskView
from proxy.telemetry.metrics import Metrics

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def collector() -> None:
    """Takes every export and answers 200, as a collector does; prints its port."""

    async def take(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", take)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _measure(config: Config, calls: int, export: bool) -> dict[str, float]:
    from opentelemetry.sdk.trace import TracerProvider

    from proxy.addons.tracing import Tracing

    tracing = (
        Tracing.from_config(config, Metrics(), TripBus(), {})
        if export
        else Tracing(TracerProvider())
    )
    upstream = config.upstreams["openai"]
    now = time.time()
    view = TaskView("t", now, now, 100, 0, 0.0, 1, 0, ["a"], None, max_tokens=10_000)
    output = Output("hello", [], "gpt-4o-mini-2024-07-18", ["stop"])
    settlement = Settlement(
        Usage(120, 40), 0.0001, "ok", 200, output, None, Settled(view, [], False)
    )
    request: Any = SimpleNamespace(headers=CIMultiDict({"traceparent": PARENT}))

    def one() -> None:
        call = Call(
            request,
            "openai",
            upstream,
            ADAPTERS["openai"],
            "/v1/chat/completions",
            CallInfo("chat", "gpt-4o-mini"),
            "task",
            "agent",
            "header",
            None,  # type: ignore[arg-type]  # the policy: the addon does not read it
            120,
            time.perf_counter(),
            b"",
            None,
            None,
        )
        # The request hook never awaits: one step of the coroutine runs it whole.
        with contextlib.suppress(StopIteration):
            tracing.request(call).send(None)
        call.sent = time.perf_counter()
        tracing.settled(call, settlement)
        tracing.done(call)

    for _ in range(min(calls, 1000)):
        one()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        one()
    on_thread = (time.perf_counter() - wall) / calls
    tracing.provider.shutdown()  # the queue's last spans leave: their export is counted too
    total = (time.process_time() - cpu) / calls
    return {
        "us_per_call_on_thread": round(on_thread * 1e6, 1),
        "cpu_us_per_call": round(total * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("role", nargs="?", default="measure", choices=("measure", "collector"))
    args = parser.parse_args()
    if args.role == "collector":
        collector()
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.tracing", "collector"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        config = load_config(
            None,
            telemetry={
                "otel": {"endpoint": f"http://127.0.0.1:{port}", "max_queue_size": 4 * args.calls}
            },
        )
        result = {
            "calls": args.calls,
            "export_on": _measure(config, args.calls, export=True),
            "no_export": _measure(config, args.calls, export=False),
        }
    finally:
        child.kill()
        child.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
