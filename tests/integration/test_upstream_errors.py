"""A provider that gives no answer: the caller's 502 or 504 names the upstream, its address and
the cause in one line, and the ``call`` log line carries the status the caller got and the
task."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

import openai
import pytest

from tests.harness import MockProviderThread


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusal(
    make_proxy: Any, base_url: str, headers: dict[str, str] | None = None, **up: Any
) -> Any:
    proxy = make_proxy(upstreams={"openai": {"base_url": base_url, **up}})
    task = "up-" + uuid.uuid4().hex[:6]
    with (
        openai.OpenAI(base_url=proxy.openai_url, api_key="sk", max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as raised,
    ):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Task-Id": task, **(headers or {})},
        )
    return raised.value, task


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tripwire")


def call_lines(caplog: pytest.LogCaptureFixture, task: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            r.fields  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "call" and r.fields.get("task") == task  # type: ignore[attr-defined]
        ]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_connection_refused_names_the_upstream_and_its_address(
    make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    error, task = refusal(make_proxy, f"http://127.0.0.1:{port}")
    assert error.status_code == 502
    message = error.message
    assert f"upstream 'openai' (http://127.0.0.1:{port})" in message
    assert "connection refused" in message and "\n" not in message
    [line] = call_lines(caplog, task)
    assert line["status"] == 502 and line["outcome"] == "unreachable"


def test_an_unknown_host_is_a_dns_failure(make_proxy: Any) -> None:
    error, _ = refusal(make_proxy, "http://no-such-host.invalid")
    assert error.status_code == 502
    assert "upstream 'openai' (http://no-such-host.invalid)" in error.message
    assert "DNS lookup of 'no-such-host.invalid' failed" in error.message


def test_tls_to_a_plain_http_port_is_a_tls_failure(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    address = mock.base_url.replace("http://", "https://")
    error, _ = refusal(make_proxy, address)
    assert error.status_code == 502
    assert f"upstream 'openai' ({address})" in error.message
    assert "TLS" in error.message


def test_a_timeout_names_the_setting_and_the_call_line_says_504(
    make_proxy: Any, mock: MockProviderThread, caplog: pytest.LogCaptureFixture
) -> None:
    error, task = refusal(make_proxy, mock.base_url, {"x-mock-delay": "1.5"}, read_timeout=0.2)
    assert error.status_code == 504
    assert f"upstream 'openai' ({mock.base_url}) sent nothing for 0.2 s" in error.message
    assert "upstreams.openai.read_timeout" in error.message
    [line] = call_lines(caplog, task)
    assert line["status"] == 504 and line["outcome"] == "timeout"
