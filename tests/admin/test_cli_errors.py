"""`tripwire tasks` and `tripwire reload` with a wrong address: one line that says what to
fix, no aiohttp internals."""

from __future__ import annotations

import socket

import pytest

from proxy.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", [("tasks", "list"), ("reload",)])
def test_a_url_without_a_scheme_says_how_to_write_it(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    code, err = run(capsys, *command, "--url", "localhost:8787", "--token", "t")
    assert code == 2
    [line] = err.strip().splitlines()
    assert "--url must be an http:// or https:// address, such as http://localhost:8787" in line


def test_a_refused_connection_is_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, err = run(capsys, "tasks", "list", "--url", f"http://127.0.0.1:{port}", "--token", "t")
    assert code == 1
    [line] = err.strip().splitlines()
    assert f"connection refused by 127.0.0.1:{port}" in line
    assert "ssl:default" not in line and "Connect call failed" not in line
    assert "--url or TRIPWIRE_URL" in line


def test_an_unknown_host_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "tasks", "list", "--url", "http://no-such-host.invalid", "--token", "t")
    assert code == 1
    assert "DNS lookup of 'no-such-host.invalid' failed" in err and "ssl:default" not in err
