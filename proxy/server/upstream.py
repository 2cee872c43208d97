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
        signer = self.signers.get(call.upstream_name)
        if signer is not None:
            headers = await signer.sign(request.method, url, headers, body)
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


def _without(query: MultiDictProxy[str], names: tuple[str, ...]) -> str:
    """The query without the client's own provider key: Tripwire's goes in its place."""
    return urlencode([(k, v) for k, v in query.items() if k not in names])


def outcome_of(error: Exception) -> str:
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        return "unreachable"
    return "interrupted"


def upstream_error(exc: BaseException) -> Exception:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("the provider did not answer in time")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(f"the provider could not be reached: {type(exc).__name__}")
    return exc if isinstance(exc, Exception) else UpstreamError("the call was interrupted")
