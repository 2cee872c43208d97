from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.tracing.receiver import OtlpReceiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own OTEL_* variables must not aim a test's spans elsewhere."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def traced(make_proxy: Any, receiver: OtlpReceiver) -> Any:
    """``traced(**sections)``: a proxy exporting its spans to the receiver, in batches of a
    twentieth of a second so a test does not wait."""

    def start(**sections: Any) -> Any:
        otel = {"endpoint": receiver.url, "schedule_delay": 0.05, **sections.pop("otel", {})}
        return make_proxy(telemetry={"otel": otel}, **sections)

    return start


@pytest.fixture
def task(request: pytest.FixtureRequest) -> str:
    """A task id of this test's own, from its name."""
    return "trace-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:90]
