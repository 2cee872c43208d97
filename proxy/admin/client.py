"""A small client of the admin API, for ``tripwire tasks ...``."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from proxy.admin.openapi import PREFIX


class AdminError(Exception):
    """The API said no (``status`` > 0), or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} (HTTP {self.status}, {self.code})"
        return self.message


def task_path(task: str, action: str | None = None) -> str:
    # "/" in a full key (tenant/task) must stay inside one path segment.
    path = f"/tasks/{quote(task, safe='')}"
    return f"{path}/{action}" if action else path


async def _request(
    base_url: str,
    token: str,
    method: str,
    path: str,
    params: dict[str, str] | None,
    body: dict[str, Any] | None,
    timeout_s: float,
) -> Any:
    url = base_url.rstrip("/") + PREFIX + path
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.request(
                method,
                URL(url, encoded=True),
                params=params,
                json=body,
                headers=headers,
            ) as response,
        ):
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise AdminError(
            0,
            "unreachable",
            f"cannot reach Tripwire at {base_url}: {_why(exc, timeout_s)}. Is `tripwire serve` "
            "running there? Give its address with --url or TRIPWIRE_URL",
        ) from exc
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            raise AdminError(status, str(error.get("code")), str(error.get("message")))
        raise AdminError(status, "http_error", text.strip()[:300] or f"HTTP {status}")
    if data is None:
        raise AdminError(status, "bad_response", "Tripwire answered with something not JSON")
    return data


def check_url(base_url: str) -> str | None:
    """Why ``base_url`` cannot be the admin API's address, or None."""
    parsed = URL(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return (
            f"--url must be an http:// or https:// address, such as "
            f"http://{base_url.split('://')[-1] or '127.0.0.1:8787'} (got {base_url!r})"
        )
    return None


def _why(exc: BaseException, timeout_s: float) -> str:
    """The cause in a person's words: aiohttp's own text carries ``ssl:default`` and the
    socket's repr."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup of '{exc.host}' failed"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake with {exc.host}:{exc.port} failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port}"
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or 'failed'})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection (is that address Tripwire?)"
    return str(exc) or type(exc).__name__


def request(
    base_url: str,
    token: str,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> Any:
    """One call of the admin API; raises ``AdminError`` with the API's own message."""
    return asyncio.run(_request(base_url, token, method, path, params, body, timeout_s))
