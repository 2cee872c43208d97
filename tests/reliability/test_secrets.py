"""No secret leaks: representative flows (answers, streams, provider errors, refusals, kills,
faults, bad input, unreachable upstreams, bad tokens, a Redis outage, escalation) run with
known API keys, provider keys, JWTs and passwords, then every log line, every metrics scrape
and every response Tripwire produced is searched for them."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from proxy.auth import mint
from proxy.telemetry.logs import JsonFormatter
from tests.harness import MockProviderThread, ProxyThread
from tests.redis_server import RedisServer, free_port
from tests.reliability.conftest import LogLines
from tests.replicas import Replica, redis_config

MARK = "LEAKCHECK"  # every secret below carries it, so a fragment of one is found too
CLIENT_OPENAI = f"sk-proj-{MARK}client0penai7f3a9c"
CLIENT_ANTHROPIC = f"sk-ant-api03-{MARK}client4nthropic"
UPSTREAM_KEY = f"sk-{MARK}upstream-injected-2b7d"
UPSTREAM_ENV_KEY = f"sk-{MARK}upstream-from-env-91ce"
TENANT_KEY = f"sk-{MARK}tenant-acme-55e0"
JWT_SECRET = f"hs256-{MARK}-signing-secret-0d4a1e9b"
WEBHOOK_SECRET = f"whsec-{MARK}-8c1f"
REDIS_PASSWORD = f"{MARK}redispass4e2"
BASIC_USER, BASIC_PASSWORD = f"{MARK}user", f"{MARK}pass"
TASK = "secrets-flow"


@dataclass
class Evidence:
    """Everything Tripwire said, to whom and where."""

    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    tokens: list[str] = field(default_factory=list)  # JWTs used, searched for as well

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts.append((where, text))

    def response(self, where: str, response: httpx2.Response) -> httpx2.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.add(where, f"{response.status_code}\n{headers}\n\n{response.text}")
        return response

    def logs(self, where: str, records: list[logging.LogRecord]) -> None:
        formatter = JsonFormatter()
        self.add(where, "\n".join(formatter.format(record) for record in records))

    def assert_clean(self) -> None:
        needles = [MARK, MARK.lower()]
        for token in self.tokens:
            needles += [token, token.rsplit(".", 1)[1]]
        basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        needles.append(basic)
        assert len(self.texts) >= 10, "too little was collected to prove anything"
        leaks = [
            (where, needle, text[max(text.find(needle) - 80, 0) : text.find(needle) + 80])
            for where, text in self.texts
            for needle in needles
            if needle in text
        ]
        assert not leaks, leaks[:5]


def scrape(
    client: httpx2.Client, base_url: str, evidence: Evidence, where: str, bearer: str = ""
) -> None:
    auth = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        response = client.get(base_url + "/metrics", headers={"Accept": accept, **auth})
        assert response.status_code == 200
        evidence.add(f"{where} metrics ({accept})", response.text)


def chat(stream: bool = False, content: str = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return body


CLAUDE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello"}],
}


def agent_flows(client: httpx2.Client, proxy: ProxyThread, evidence: Evidence) -> None:
    """What agents do, well and badly, with their own keys."""
    openai_auth = {"Authorization": f"Bearer {CLIENT_OPENAI}"}
    anthropic_auth = {"x-api-key": CLIENT_ANTHROPIC, "anthropic-version": "2023-06-01"}
    base = proxy.base_url
    calls: list[tuple[str, str, Any, dict[str, str]]] = [
        ("ok", "/v1/chat/completions", chat(), openai_auth),
        ("ok, task from the key", "/v1/chat/completions", chat(content="no task"), openai_auth),
        ("stream", "/v1/chat/completions", chat(stream=True), openai_auth),
        ("responses", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, openai_auth),
        ("messages", "/v1/messages", CLAUDE, anthropic_auth),
        ("messages stream", "/v1/messages", {**CLAUDE, "stream": True}, anthropic_auth),
        ("injected key", "/u/team/v1/chat/completions", chat(), openai_auth),
        ("provider 401", "/v1/chat/completions", chat(), {**openai_auth, "x-mock-status": "401"}),
        ("provider 429", "/v1/messages", CLAUDE, {**anthropic_auth, "x-mock-status": "429"}),
        (
            "reset",
            "/v1/chat/completions",
            chat(stream=True),
            {**openai_auth, "x-mock-reset": "mid"},
        ),
        ("unreachable", "/u/closed/v1/chat/completions", chat(), openai_auth),
        ("bad json", "/v1/chat/completions", b"{not json", openai_auth),
        (
            "bad shape",
            "/v1/messages",
            {"model": "m", "messages": 5, "max_tokens": 1},
            anthropic_auth,
        ),
        ("too large", "/v1/chat/completions", chat(content="x" * 70_000), openai_auth),
        ("dot segment", "/v1/%2e%2e/admin", chat(), openai_auth),
        ("unknown upstream", "/u/nowhere/v1/chat/completions", chat(), openai_auth),
        ("chaos", "/v1/chat/completions", chat(), {**openai_auth, "X-Tripwire-Chaos": "1"}),
    ]
    for step, (name, path, body, headers) in enumerate(calls):
        task = {} if name == "ok, task from the key" else {"X-Task-Id": f"{TASK}-{step}"}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(
            base + path,
            content=content,
            headers={"Content-Type": "application/json", **task, **headers},
        )
        evidence.response(name, response)
    for turn in range(4):  # a loop, killed, then refused
        evidence.response(
            "kill",
            client.post(
                base + "/v1/chat/completions",
                json=chat(content=f"turn {turn}"),
                headers={**openai_auth, "X-Task-Id": f"{TASK}-kill", "x-mock-reply": "same"},
            ),
        )


@pytest.fixture
def upstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKCHECK_TEAM_KEY", UPSTREAM_ENV_KEY)
    monkeypatch.setenv("LEAKCHECK_JWT_SECRET", JWT_SECRET)


@pytest.mark.usefixtures("upstream_env")
def test_no_secret_in_logs_metrics_or_answers_in_process(
    make_proxy: Any, mock: MockProviderThread, log_lines: LogLines
) -> None:
    evidence = Evidence()
    closed = f"http://127.0.0.1:{free_port()}"
    proxy = make_proxy(
        server={"max_body_bytes": 64 * 1024},
        upstreams={
            "team": {"base_url": mock.base_url, "api_key": UPSTREAM_KEY},
            "env": {"base_url": mock.base_url, "api_key_env": "LEAKCHECK_TEAM_KEY"},
            "closed": {"base_url": closed, "api_key": UPSTREAM_KEY},
        },
        allow_chaos=True,
        policy={
            "rules": [{"match": {"task": f"{TASK}-16"}, "chaos": {"probability": 1, "stall": 0.05}}]
        },
    )
    with httpx2.Client(timeout=30) as client:
        agent_flows(client, proxy, evidence)
        evidence.response(
            "env key",
            client.post(
                proxy.base_url + "/u/env/v1/chat/completions",
                json=chat(),
                headers={"Authorization": f"Bearer {CLIENT_OPENAI}"},
            ),
        )
        scrape(client, proxy.base_url, evidence, "proxy")
    sent = {r.headers.get("authorization") for r in mock.provider.requests}
    assert f"Bearer {UPSTREAM_KEY}" in sent and f"Bearer {UPSTREAM_ENV_KEY}" in sent
    assert f"Bearer {CLIENT_OPENAI}" in sent  # the flows really carried the secrets
    evidence.logs("proxy log", log_lines.records)
    assert log_lines.events("trip") and log_lines.events("refused")
    evidence.assert_clean()


@pytest.mark.usefixtures("upstream_env")
def test_no_secret_in_logs_metrics_or_answers_with_tokens(
    make_proxy: Any, mock: MockProviderThread, log_lines: LogLines
) -> None:
    evidence = Evidence()
    # A credential in the query: logs show a JSON webhook's path (escalation.py, Target.shown).
    hook = f"http://127.0.0.1:{free_port()}/hooks/trips?token={MARK}-webhook"
    proxy = make_proxy(
        auth={"mode": "jwt", "hs256_secret_env": "LEAKCHECK_JWT_SECRET"},
        tenants={"acme": {"upstream_keys": {"openai": {"api_key": TENANT_KEY}}}},
        escalation={
            "owners": {"team": {"url": hook}},
            "secret": WEBHOOK_SECRET,
            "attempts": 1,
            "timeout": 1,
        },
        policy={"rules": [{"match": {"task": "*kill*"}, "limits": {"max_calls": 1}}]},
    )
    good = mint(JWT_SECRET, {"tenant": "acme", "task": "kill-me", "owner": "team"}, 600)
    forged = mint(
        "not-the-signing-secret-but-as-long-as-one-0000", {"tenant": "acme", "task": "forged"}, 600
    )
    expired = mint(JWT_SECRET, {"tenant": "acme"}, -120)
    unsigned = jwt.encode({"tenant": "acme", "exp": time.time() + 60}, None, algorithm="none")
    evidence.tokens += [good, forged, expired]
    url = proxy.base_url + "/v1/chat/completions"
    with httpx2.Client(timeout=30) as client:
        for name, headers in [
            (
                "token, provider key",
                {"X-Tripwire-Token": good, "Authorization": f"Bearer {CLIENT_OPENAI}"},
            ),
            ("token as bearer, tenant key", {"Authorization": f"Bearer {good}"}),
            ("killed", {"Authorization": f"Bearer {good}"}),
            ("forged", {"Authorization": f"Bearer {forged}"}),
            ("expired", {"X-Tripwire-Token": expired}),
            ("alg none", {"Authorization": f"Bearer {unsigned}"}),
            ("garbage", {"Authorization": f"Bearer {MARK}.not.a.jwt"}),
            ("missing", {"x-api-key": CLIENT_ANTHROPIC}),
        ]:
            evidence.response(name, client.post(url, json=chat(), headers=headers))
        deadline = time.monotonic() + 5  # the escalation's delivery attempt, then its log line
        while time.monotonic() < deadline and not log_lines.events("escalation_failed"):
            time.sleep(0.05)
        scraper = mint(JWT_SECRET, {"sub": "prometheus", "role": "metrics"}, 600)
        evidence.tokens.append(scraper)
        scrape(client, proxy.base_url, evidence, "proxy", scraper)
    assert f"Bearer {TENANT_KEY}" in {
        r.headers.get("authorization") for r in mock.provider.requests
    }
    evidence.logs("proxy log", log_lines.records)
    evidence.assert_clean()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", None, "--requirepass", REDIS_PASSWORD)
    yield server
    server.stop()


@pytest.mark.usefixtures("upstream_env")
def test_no_secret_in_a_replicas_log_and_metrics(
    tmp_path: Path, mock: MockProviderThread, locked_redis: RedisServer
) -> None:
    """A `tripwire serve` process with its secrets in the config file and the environment, a
    password-protected Redis that goes away and comes back."""
    evidence = Evidence()
    host = mock.base_url.removeprefix("http://")
    config = redis_config(
        mock.base_url,
        f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0",
        state={"redis_timeout": 0.5},
        upstreams={
            "openai": {"base_url": mock.base_url, "format": "openai"},
            "anthropic": {"base_url": mock.base_url, "format": "anthropic"},
            "team": {"base_url": mock.base_url, "api_key": UPSTREAM_KEY},
            "env": {"base_url": mock.base_url, "api_key_env": "LEAKCHECK_TEAM_KEY"},
            "basic": {"base_url": f"http://{BASIC_USER}:{BASIC_PASSWORD}@{host}"},
            "closed": {"base_url": f"http://127.0.0.1:{free_port()}", "api_key": UPSTREAM_KEY},
        },
        server={"max_body_bytes": 64 * 1024},
        allow_chaos=True,
        policy={
            "rules": [{"match": {"task": f"{TASK}-16"}, "chaos": {"probability": 1, "stall": 0.05}}]
        },
    )
    config_file = tmp_path / "tripwire.yaml"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    replica = Replica(config_file, tmp_path / "replica.log")
    try:
        replica.wait_ready()
        proxy = _Remote(replica.port)
        with httpx2.Client(timeout=30) as client:
            agent_flows(client, proxy, evidence)  # type: ignore[arg-type]
            locked_redis.stop()
            for _ in range(3):
                evidence.response(
                    "redis down",
                    client.post(
                        proxy.base_url + "/v1/chat/completions",
                        json=chat(),
                        headers={"Authorization": f"Bearer {CLIENT_OPENAI}"},
                    ),
                )
            evidence.response("readyz down", client.get(proxy.base_url + "/readyz"))
            locked_redis.start()
            evidence.response("readyz up", _wait_ready(client, proxy.base_url))
            scrape(client, proxy.base_url, evidence, "replica")
    finally:
        replica.stop()
    log = replica.log_file.read_text(encoding="utf-8")
    assert '"event":"state_unreachable"' in log and '"event":"trip"' in log
    assert '"event":"listening"' in log and f"http://{host}" in log
    evidence.add("replica log", log)
    evidence.assert_clean()


@dataclass
class _Remote:
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait_ready(client: httpx2.Client, base_url: str) -> httpx2.Response:
    deadline = time.monotonic() + 10
    while True:
        response = client.get(base_url + "/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_the_scan_finds_a_planted_secret() -> None:
    evidence = Evidence()
    for number in range(25):
        evidence.add(f"clean {number}", "nothing to see")
    evidence.add("planted", f'{{"event": "call", "auth": "Bearer {CLIENT_OPENAI[:20]}"}}')
    with pytest.raises(AssertionError, match="planted"):
        evidence.assert_clean()


MALFORMED = [
    # A header line with no colon after a credential, a control character inside a credential,
    # a bad Content-Length after a key: aiohttp's parser quotes the offending line.
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_OPENAI}\r\n"
    "Not A Header\r\n\r\n",
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_OPENAI}\x01"
    "\r\n\r\n",
    f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {CLIENT_ANTHROPIC}\r\n"
    "Content-Length: nope\r\n\r\n",
    f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {CLIENT_ANTHROPIC}\x7f\r\n\r\n",
    f"GET /v1/models?key={CLIENT_OPENAI} HTTP/1.1\r\nHost: x\r\nAuthorization: {JWT_SECRET}"
    "\x00\r\n\r\n",
]


def test_malformed_header_lines_with_secrets_reach_no_output() -> None:
    """The server's own error logging (aiohttp's parser errors) goes through Tripwire's JSON
    lines with header values left out: a real process's stdout and stderr are scanned."""
    import socket
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--mock", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tripwire serve did not start"
                time.sleep(0.05)
        for payload in MALFORMED:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(payload.encode("latin-1"))
                assert sock.recv(64).startswith(b"HTTP/1.")
    finally:
        process.terminate()
        out, err = process.communicate(timeout=20)
    output = out.decode() + err.decode()
    assert MARK not in output and MARK.lower() not in output
    assert "Traceback" not in output
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["event"] == "server_error"]
    assert len(errors) == len(MALFORMED)
    assert all(line["error"] == "BadHttpMessage" and line["reason"] for line in errors)
