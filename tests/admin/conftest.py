"""Helpers of the admin API and token tests: keys, tokens, and a small admin client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxy.auth import mint
from tests.harness import ProxyThread
from tests.redis_server import PATIENT_REDIS_TIMEOUT_S

# 32 bytes or more: PyJWT warns about shorter HMAC keys, and the suite turns warnings into errors.
SECRET = "tripwire-tests-hs256-secret-0123456789"


def token(ttl: float = 600, secret: str = SECRET, **claims: Any) -> str:
    return mint(secret, {k: v for k, v in claims.items() if v is not None}, ttl)


def admin_token(tenant: str | None = None, sub: str = "ops@example.com", **claims: Any) -> str:
    return token(role="admin", tenant=tenant, sub=sub, **claims)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Admin:
    """The admin API of one proxy, as one token sees it."""

    def __init__(self, proxy: ProxyThread, bearer: str | None) -> None:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self.http = httpx.Client(
            base_url=proxy.base_url + "/tripwire/v1", headers=headers, timeout=10
        )

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.http.post(path, json=body) if body is not None else self.http.post(path)

    def task(self, task: str) -> httpx.Response:
        return self.get(f"/tasks/{quote(task, safe='')}")

    def act(self, task: str, action: str, body: Any = None) -> httpx.Response:
        return self.post(f"/tasks/{quote(task, safe='')}/{action}", body)

    def tasks(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/tasks", **params)
        assert response.status_code == 200, response.text
        return response.json()["tasks"]  # type: ignore[no-any-return]

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/audit", **params)
        assert response.status_code == 200, response.text
        return response.json()["events"]  # type: ignore[no-any-return]


@pytest.fixture
def admins() -> Iterator[Any]:
    """``admins(proxy, token)`` gives an ``Admin`` client, closed after the test."""
    opened: list[Admin] = []

    def open_(proxy: ProxyThread, bearer: str | None) -> Admin:
        client = Admin(proxy, bearer)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``state`` config section of one backend; Redis keys get a prefix of this test's own,
    so listings see only this test's tasks."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    return {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": unique("tw"),
        "redis_timeout": PATIENT_REDIS_TIMEOUT_S,
    }


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
