"""Who may scrape ``/metrics``: anyone, or a scraper with a bearer token.

Metrics cover every tenant (their spend, their agents, their trips), so with ``auth.mode: jwt``
a scrape needs a token by default: the configured ``telemetry.metrics_token``, or a Tripwire
token of no tenant whose role is ``metrics`` (minted with ``tripwire token --role metrics``),
``viewer`` or ``admin``.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from proxy.auth import TokenVerifier
from proxy.config import Config
from proxy.errors import AuthError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tripwire-metrics"'}


def requires_token(config: Config) -> bool:
    settings = config.telemetry
    if settings.metrics_auth == "auto":
        return config.auth.mode == "jwt" or settings.resolved_metrics_token() is not None
    return settings.metrics_auth == "token"


class ScrapeGate:
    def __init__(self, required: bool, token: str | None, verifier: TokenVerifier | None) -> None:
        self.required = required
        self.token = token.encode() if token else None
        self.verifier = verifier

    @classmethod
    def from_config(cls, config: Config) -> ScrapeGate:
        verifier = TokenVerifier(config.auth)
        return cls(
            requires_token(config),
            config.telemetry.resolved_metrics_token(),
            verifier if verifier.configured else None,
        )

    def refusal(self, authorization: str) -> web.Response | None:
        """None when the scrape may go ahead, else the answer that refuses it."""
        if not self.required:
            return None
        scheme, _, value = authorization.partition(" ")
        bearer = value.strip() if scheme.lower() == "bearer" else ""
        if not bearer:
            return _refuse(401, "metrics need a bearer token (Authorization: Bearer ...)")
        if self.token is not None and hmac.compare_digest(bearer.encode(), self.token):
            return None
        if self.verifier is None:
            return _refuse(401, "the metrics token is not accepted")
        try:
            claims = self.verifier.verify(bearer)
        except AuthError as exc:
            return _refuse(401, str(exc))
        if not claims.may_scrape:
            return _refuse(
                403,
                "this token may not scrape metrics: it needs the metrics, viewer or admin role "
                "and no tenant (metrics cover every tenant)",
            )
        return None


def _refuse(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=message + "\n",
        headers=_CHALLENGE if status == 401 else None,
    )
