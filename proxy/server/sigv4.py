"""SigV4 re-signing of calls to an upstream whose AWS credentials Tripwire holds (Bedrock):
the client signed for Tripwire's host, or did not sign at all; Tripwire signs for the real one
with botocore's signer. botocore is the ``aws`` extra, imported only when an upstream asks."""

from __future__ import annotations

import asyncio
from typing import Any

from multidict import CIMultiDict

from proxy.config import AwsSigning
from proxy.errors import TripwireError

# The client's signature and what it signed with: none of it holds for the upstream's host.
_CLIENT_SIGNING = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")


class SigV4Signer:
    def __init__(self, settings: AwsSigning) -> None:
        try:
            import botocore.session  # type: ignore[import-untyped]
            from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
            from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise RuntimeError("aws_sigv4 needs botocore: install tripwire-proxy[aws]") from exc
        self._auth = SigV4Auth
        self._request = AWSRequest
        self.settings = settings
        session = botocore.session.Session(profile=settings.profile)
        self._credentials = session.get_credentials()
        if self._credentials is None:
            raise RuntimeError(
                f"aws_sigv4 for region {settings.region}: botocore found no AWS credentials"
            )

    def _sign(self, method: str, url: str, headers: CIMultiDict[str], body: bytes) -> Any:
        # get_frozen_credentials refreshes expiring role credentials, which may block on I/O.
        credentials = self._credentials.get_frozen_credentials()
        request = self._request(method=method, url=url, data=body, headers=dict(headers))
        self._auth(credentials, self.settings.service, self.settings.region).add_auth(request)
        return request.headers

    async def sign(
        self, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> CIMultiDict[str]:
        for name in _CLIENT_SIGNING:
            headers.popall(name, None)
        try:
            signed = await asyncio.to_thread(self._sign, method, url, headers, body)
        except Exception as exc:
            raise TripwireError(f"signing the call for AWS failed: {type(exc).__name__}") from exc
        return CIMultiDict(signed.items())
