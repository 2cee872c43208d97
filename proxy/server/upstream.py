"""Sending a call to its provider: the URL, the headers (the provider key in the place the
wire format wants it), the timeouts, and what a failure to get an answer is called."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import aiohttp
from multidict import MultiDictProxy

from proxy.config import Config
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.pipeline.call import Call
from proxy.server.headers import request_headers
from proxy.server.intake import TOKEN_HEADER
from proxy.server.sigv4 import SigV4Signer


class UpstreamClient:
    def __init__(
        self, config: Config, session: aiohttp.ClientSession, consumed: frozenset[str]
    ) -> None:
        self.session = session
        self.consumed = consumed  # the tag headers Tripwire reads and does not forward
        self.keys = {name: up.resolved_key() for name, up in config.upstreams.items()}
        self.signers = {
            name: SigV4Signer(up.aws_sigv4)
            for name, up in config.upstreams.items()
            if up.aws_sigv4 is not None
        }
        self.tenant_keys = {
            (tenant, upstream): key.resolved()
            for tenant, settings in config.tenants.items()
            for upstream, key in settings.upstream_keys.items()
        }
        # One per (connect, read) pair: built once, not per call.
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    async def send(self, call: Call, body: bytes) -> aiohttp.ClientResponse:
        request = call.request
        url = call.upstream.base_url + call.path
        tenant = call.tenant
        key = self.tenant_keys.get((tenant, call.upstream_name)) if tenant else None
        key = key or self.keys[call.upstream_name]
        query = request.rel_url.raw_query_string
        if query and key and call.adapter.query_credentials:
            query = _without(request.rel_url.query, call.adapter.query_credentials)
        if query:
            url += "?" + query
        drop = self.consumed
        if call.claims is not None and not request.headers.get(TOKEN_HEADER):
            drop = drop | {"authorization"}  # it carried the Tripwire token, not a provider key
        headers = request_headers(request.headers, drop, call.adapter, key)
        if call.upstream_headers:
            headers.update(call.upstream_headers)
        signer = self.signers.get(call.upstream_name)
        if signer is not None:
            headers = await signer.sign(request.method, url, headers, body)
        limits = (call.upstream.connect_timeout, call.upstream.read_timeout)
        timeout = self._timeouts.get(limits)
        if timeout is None:
            timeout = self._timeouts[limits] = aiohttp.ClientTimeout(
                total=None, connect=limits[0], sock_read=limits[1]
            )
        return await self.session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            timeout=timeout,
            allow_redirects=False,
        )


def _without(query: MultiDictProxy[str], names: tuple[str, ...]) -> str:
    """The query without the client's own provider key: Tripwire's goes in its place."""
    return urlencode([(k, v) for k, v in query.items() if k not in names])


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
