"""Tripwire tokens: JWTs that say who may call, for which tenant and task, within what budget.

Keys are loaded once at start-up: an HS256 secret, a PEM public key (RS256 or ES256, by key
type) or a JWKS file (keys chosen by ``kid``, so keys can rotate). Each key accepts exactly one
algorithm, chosen by the key and never by the token, so ``alg: none`` and HS/RS confusion are
refused. ``exp`` is required; ``nbf``, ``iss`` and ``aud`` are checked when configured.

PyJWT (and the cryptography library under it, about 14 MB together) loads only once a key
is configured: a proxy without token keys never verifies a JWT.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.config import AuthSettings, Limits
from proxy.errors import AuthError, ConfigError
from proxy.ids import MAX_TENANT_LENGTH, TENANT_PATTERN

ADMIN_ROLE = "admin"
# Reads the admin API (and the console) but changes nothing.
VIEWER_ROLE = "viewer"
# Scrapes /metrics and nothing else.
METRICS_ROLE = "metrics"


class Claims(BaseModel):
    """What a Tripwire token may carry besides the registered JWT claims."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str | None = None
    # The task and agent claims go through the canonical form of every id (proxy.ids) where
    # a call is read; the tenant is one of the names Tripwire itself joins to a task with "/".
    tenant: str | None = Field(default=None, max_length=MAX_TENANT_LENGTH, pattern=TENANT_PATTERN)
    task: str | None = Field(default=None, max_length=128)
    agent: str | None = Field(default=None, max_length=128)
    owner: str | None = Field(default=None, max_length=2048)
    role: str | None = None
    roles: list[str] = []
    limits: Limits | None = None  # the budget minted with the token: a client cannot raise it
    jti: str | None = Field(default=None, max_length=128)
    iat: int | float | None = None

    def bound_task(self, token: str) -> str:
        """The task that signed limits without a ``task`` claim bind to: the token itself
        (its ``jti``, else its subject and issue time, else the whole token), so no header
        can give the same token a fresh budget."""
        if self.jti:
            return f"token-{self.jti}"
        seed = f"{self.sub}|{self.iat}" if self.sub and self.iat is not None else token
        return "token-" + hashlib.blake2b(seed.encode(), digest_size=8).hexdigest()

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE or ADMIN_ROLE in self.roles

    @property
    def may_scrape(self) -> bool:
        """May read ``/metrics``, which covers every tenant: a token of no tenant with the
        metrics role, or a global admin's or viewer's."""
        if self.tenant is not None:
            return False
        return self.role == METRICS_ROLE or METRICS_ROLE in self.roles or self.is_viewer

    @property
    def is_viewer(self) -> bool:
        """May read the admin API: an admin, or a token with the viewer role."""
        return self.is_admin or self.role == VIEWER_ROLE or VIEWER_ROLE in self.roles


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any
    algorithm: str


def _pem_key(path: str) -> _Key:
    import jwt
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"auth.public_key_file: cannot read {path}: {exc.strerror}") from exc
    for algorithm, loader in (("RS256", RSAAlgorithm), ("ES256", ECAlgorithm)):
        try:
            key = loader(loader.SHA256).prepare_key(data)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if hasattr(key, "public_bytes") or hasattr(key, "public_key"):
            return _Key(key, algorithm)
    raise ConfigError(f"auth.public_key_file: {path} holds no RSA or EC public key")


def _jwks(path: str) -> dict[str, _Key]:
    import jwt

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        keys = jwt.PyJWKSet.from_dict(document)
    except (OSError, ValueError, jwt.PyJWKSetError) as exc:
        raise ConfigError(f"auth.jwks_file: cannot load {path}: {exc}") from exc
    loaded: dict[str, _Key] = {}
    for jwk in keys.keys:
        if not jwk.key_id:
            raise ConfigError(f"auth.jwks_file: every key in {path} needs a kid")
        algorithm = jwk.algorithm_name
        if algorithm not in ("RS256", "ES256"):
            raise ConfigError(
                f"auth.jwks_file: key {jwk.key_id} uses {algorithm}; "
                "only RS256 and ES256 are accepted"
            )
        loaded[jwk.key_id] = _Key(jwk.key, algorithm)
    return loaded


class TokenVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        secret = settings.hs256_secret or (
            os.environ.get(settings.hs256_secret_env) if settings.hs256_secret_env else None
        )
        self._hmac = _Key(secret.encode(), "HS256") if secret else None
        self._pem = _pem_key(str(settings.public_key_file)) if settings.public_key_file else None
        self._jwks = _jwks(str(settings.jwks_file)) if settings.jwks_file else {}
        self.configured = bool(self._hmac or self._pem or self._jwks)
        if self.configured:
            import jwt  # noqa: F401  (loaded now, not by the first call that carries a token)
        required = ["exp"]
        if settings.issuer:
            required.append("iss")
        if settings.audience:
            required.append("aud")
        self._options: Any = {"require": required}

    def _key_for(self, token: str) -> _Key:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("the Tripwire token is not a JWT") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if kid is not None and self._jwks:
            key = self._jwks.get(str(kid))
            if key is None:
                raise AuthError("the Tripwire token is signed with an unknown key id")
            candidates = [key]
        else:
            candidates = [k for k in (self._hmac, self._pem) if k is not None]
        for key in candidates:
            if key.algorithm == algorithm:
                return key
        raise AuthError(f"the Tripwire token's algorithm {algorithm!r} is not accepted")

    def verify(self, token: str) -> Claims:
        if not self.configured:
            raise AuthError("Tripwire has no token keys configured")
        import jwt

        key = self._key_for(token)
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the Tripwire token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("the Tripwire token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("the Tripwire token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("the Tripwire token has the wrong issuer") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"the Tripwire token is invalid: {exc}") from exc
        try:
            return Claims.model_validate(payload)
        except ValidationError as exc:
            detail = exc.errors()[0]["msg"]
            raise AuthError(f"the Tripwire token's claims are invalid: {detail}") from None


def mint(secret: str, claims: dict[str, Any], ttl_s: float, **registered: Any) -> str:
    """An HS256 token, for ``tripwire token`` and the tests."""
    import time

    import jwt

    now = int(time.time())
    payload = {"iat": now, "exp": now + int(ttl_s), **registered, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")
