"""Sending a call to its provider: the URL, the headers (the provider key in the place the
wire format wants it), the timeouts, and what a failure to get an answer is called."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.config import Config
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.pipeline.call import Call
from proxy.server.headers import request_headers
from proxy.server.intake import TOKEN_HEADER


class UpstreamClient:
    def __init__(
        self, config: Config, session: aiohttp.ClientSession, consumed: frozenset[str]
    ) -> None:
        self.session = session
        self.consumed = consumed  # the tag headers Tripwire reads and does not forward
        self.keys = {name: up.resolved_key() for name, up in config.upstreams.items()}
        self.tenant_keys = {
            (tenant, upstream): key.resolved()
            for tenant, settings in config.tenants.items()
            for upstream, key in settings.upstream_keys.items()
        }

    async def send(self, call: Call, body: bytes) -> aiohttp.ClientResponse:
        request = call.request
        url = call.upstream.base_url + call.path
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        drop = self.consumed
        if call.claims is not None and not request.headers.get(TOKEN_HEADER):
            drop = drop | {"authorization"}  # it carried the Tripwire token, not a provider key
        tenant = call.tenant
        key = self.tenant_keys.get((tenant, call.upstream_name)) if tenant else None
        headers = request_headers(
            request.headers, drop, call.adapter, key or self.keys[call.upstream_name]
        )
        if call.upstream_headers:
            headers.update(call.upstream_headers)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=call.upstream.connect_timeout,
            sock_read=call.upstream.read_timeout,
        )
        return await self.session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            timeout=timeout,
            allow_redirects=False,
        )


def outcome_of(error: Exception) -> str:
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        return "unreachable"
    return "interrupted"


def upstream_error(exc: BaseException, call: Call) -> Exception:
    """What the caller is told when the provider gave no answer: which upstream, at which
    address, and why, in one line an operator can act on."""
    where = f"upstream '{call.upstream_name}' ({call.upstream.base_url})"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"{where} did not accept a connection within {call.upstream.connect_timeout:g} s "
            f"(upstreams.{call.upstream_name}.connect_timeout)"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(
            f"{where} sent nothing for {call.upstream.read_timeout:g} s "
            f"(upstreams.{call.upstream_name}.read_timeout)"
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(f"{where} could not be reached: {_cause(exc)}")
    return exc if isinstance(exc, Exception) else UpstreamError("the call was interrupted")


def _cause(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup of '{exc.host}' failed ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of '{exc.host}' not accepted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake with '{exc.host}' failed ({exc.os_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port} (is the provider running?)"
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the provider closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the provider's answer broke off"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
