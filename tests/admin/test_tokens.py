"""Tripwire tokens on agent traffic (``auth.mode: jwt``): every bad token is refused with 401 in
the provider's own error format, before anything reaches the provider; a signed task and budget
hold whatever the client says in headers or the URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.admin.conftest import SECRET, token, unique
from tests.contract.sdk import ask, make_client, params_for
from tests.harness import MockProviderThread

ISSUER = "https://auth.example.com"
AUDIENCE = "tripwire"
HS256 = {"mode": "jwt", "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE, "task": "t", **extra}


def hs256(payload: dict[str, Any], secret: str | bytes = SECRET, **header: Any) -> str:
    """Signed by hand, so a test can sign with any bytes (PyJWT refuses a PEM as an HMAC key)."""
    key = secret.encode() if isinstance(secret, str) else secret
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def alg_none(payload: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(payload).encode())}."


def tamper_payload(good: str) -> str:
    """The same signature over a payload that now names another task."""
    head, body, signature = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["task"] = "someone-elses-task"
    return f"{head}.{b64(json.dumps(payload).encode())}.{signature}"


def tamper_signature(good: str) -> str:
    head, body, signature = good.split(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    return f"{head}.{body}.{flipped}"


HS256_BAD: dict[str, Callable[[], str]] = {
    "expired": lambda: hs256(claims(exp=int(time.time()) - 300)),
    "not yet valid": lambda: hs256(claims(nbf=int(time.time()) + 300)),
    "wrong audience": lambda: hs256(claims(aud="another-service")),
    "wrong issuer": lambda: hs256(claims(iss="https://evil.example.com")),
    "no expiry": lambda: hs256({k: v for k, v in claims().items() if k != "exp"}),
    "tampered payload": lambda: tamper_payload(hs256(claims())),
    "tampered signature": lambda: tamper_signature(hs256(claims())),
    "alg none": lambda: alg_none(claims()),
    "another secret": lambda: hs256(claims(), "another-secret-of-the-same-length-012345"),
    "not a jwt": lambda: "sk-proj-abcdef0123456789",
    "claims of the wrong type": lambda: hs256(claims(tenant="not a valid tenant!")),
}


def assert_refused_openai(root: str, bearer: str, mock: MockProviderThread) -> str:
    with pytest.raises(openai.AuthenticationError) as refused:
        ask("chat", root, api_key=bearer)
    error = refused.value
    assert error.status_code == 401
    assert error.response.headers["x-should-retry"] == "false"
    assert error.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert error.body["code"] == "tripwire_unauthorized"  # type: ignore[index]
    assert mock.provider.total_hits == 0
    return error.message


def assert_refused_anthropic(root: str, bearer: str | None, mock: MockProviderThread) -> str:
    headers = {"X-Tripwire-Token": bearer} if bearer is not None else {}
    with pytest.raises(anthropic.AuthenticationError) as refused:
        ask("messages", root, headers=headers)
    error = refused.value
    assert error.status_code == 401
    assert error.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert mock.provider.total_hits == 0
    return error.message


@pytest.mark.parametrize("case", sorted(HS256_BAD))
def test_bad_hs256_tokens_are_refused(make_proxy: Any, mock: MockProviderThread, case: str) -> None:
    proxy = make_proxy(auth=HS256)
    bad = HS256_BAD[case]()
    assert_refused_openai(proxy.base_url, bad, mock)
    assert_refused_anthropic(proxy.base_url, bad, mock)


def test_the_reasons_are_named(make_proxy: Any, mock: MockProviderThread) -> None:
    proxy = make_proxy(auth=HS256)
    expected = {
        "expired": "expired",
        "not yet valid": "not valid yet",
        "wrong audience": "another audience",
        "wrong issuer": "wrong issuer",
        "alg none": "'none' is not accepted",
        "not a jwt": "not a JWT",
    }
    for case, words in expected.items():
        assert words in assert_refused_openai(proxy.base_url, HS256_BAD[case](), mock), case


def test_a_call_without_any_token_is_refused(make_proxy: Any, mock: MockProviderThread) -> None:
    proxy = make_proxy(auth=HS256)
    with httpx.Client(base_url=proxy.base_url) as http:
        chat = http.post("/v1/chat/completions", json=params_for("chat"))
        messages = http.post("/v1/messages", json=params_for("messages"))
    assert chat.status_code == messages.status_code == 401
    assert chat.json()["error"]["code"] == "tripwire_unauthorized"
    assert "needs a token" in chat.json()["error"]["message"]
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "authentication_error"
    assert mock.provider.total_hits == 0


def test_a_good_hs256_token_passes(make_proxy: Any, mock: MockProviderThread) -> None:
    proxy = make_proxy(auth=HS256)
    task = unique("signed")
    reply = ask("chat", proxy.base_url, api_key=hs256(claims(task=task)))
    assert reply.status == 200 and reply.headers["x-tripwire-task"] == task
    reply = ask("messages", proxy.base_url, headers={"X-Tripwire-Token": hs256(claims(task=task))})
    assert reply.status == 200
    assert mock.provider.total_hits == 2
    # The token travelled as the OpenAI SDK's API key: it is Tripwire's, never the provider's.
    assert "authorization" not in mock.provider.requests[0].headers


# -- public keys -------------------------------------------------------------------------


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    main, other = _rsa(), _rsa()
    public_pem = main.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"main": main, "other": other, "public_pem": public_pem}


def rs256(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


@pytest.fixture
def pem_proxy(make_proxy: Any, keys: dict[str, Any], tmp_path: Path) -> Any:
    path = tmp_path / "tripwire.pub"
    path.write_bytes(keys["public_pem"])
    return make_proxy(auth={"mode": "jwt", "public_key_file": str(path), "audience": AUDIENCE})


def test_rs256_with_a_public_key(pem_proxy: Any, keys: dict[str, Any], mock: Any) -> None:
    good = rs256(claims(), keys["main"])
    assert ask("chat", pem_proxy.base_url, api_key=good).status == 200
    mock.provider.reset()
    for bad in (
        # HS/RS confusion: the public key, which anyone may hold, used as an HMAC secret.
        hs256(claims(), keys["public_pem"]),
        rs256(claims(), keys["other"]),
        rs256(claims(exp=int(time.time()) - 300), keys["main"]),
        tamper_payload(good),
        alg_none(claims()),
    ):
        assert_refused_openai(pem_proxy.base_url, bad, mock)
        assert_refused_anthropic(pem_proxy.base_url, bad, mock)


@pytest.fixture
def jwks_proxy(make_proxy: Any, keys: dict[str, Any], tmp_path: Path) -> Any:
    jwk = RSAAlgorithm.to_jwk(keys["main"].public_key(), as_dict=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "2026-01", "alg": "RS256"}]}))
    return make_proxy(auth={"mode": "jwt", "jwks_file": str(path), "audience": AUDIENCE})


def test_jwks_keys_are_chosen_by_kid(jwks_proxy: Any, keys: dict[str, Any], mock: Any) -> None:
    assert ask("chat", jwks_proxy.base_url, api_key=rs256(claims(), keys["main"], "2026-01"))
    mock.provider.reset()
    unknown = rs256(claims(), keys["other"], "2026-02")
    assert "unknown key id" in assert_refused_openai(jwks_proxy.base_url, unknown, mock)
    for bad in (
        unknown,
        rs256(claims(), keys["main"], "2026-02"),  # the right key under a kid nobody published
        rs256(claims(), keys["other"], "2026-01"),
        rs256(claims(), keys["main"]),  # no kid at all
        hs256(claims(), keys["public_pem"], kid="2026-01"),
    ):
        assert_refused_openai(jwks_proxy.base_url, bad, mock)
        assert_refused_anthropic(jwks_proxy.base_url, bad, mock)


# -- a signed budget ---------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_a_signed_budget_holds_against_headers(
    make_proxy: Any, mock: MockProviderThread, tenant: str | None
) -> None:
    proxy = make_proxy(auth={"mode": "jwt", "hs256_secret": SECRET})
    task = unique("budget")
    bearer = token(task=task, agent="writer", tenant=tenant, limits={"max_tokens": 500})
    # Everything a client could try: another task and agent by header and by URL, a made-up
    # limit header, and a huge output cap of its own.
    root = f"{proxy.base_url}/t/other-task/a/other-agent"
    headers = {
        "X-Task-Id": "other-task",
        "X-Agent-Id": "other-agent",
        "X-Tripwire-Max-Tokens": "1000000",
        "X-Tripwire-Limits": '{"max_tokens": 1000000}',
    }
    client = make_client("chat", root, api_key=bearer)
    refused = None
    with client:
        for step in range(10):
            params = params_for("chat", prompt=f"step {step}", max_completion_tokens=100_000)
            # Answers of their own, so no loop detector steps in before the budget does.
            reply = {"x-mock-reply": " ".join(uuid.uuid4().hex for _ in range(8))}
            try:
                client.chat.completions.create(**params, extra_headers={**headers, **reply})
            except openai.PermissionDeniedError as error:
                refused = error
                break
    assert refused is not None, "the signed budget of 500 tokens never ran out"
    assert refused.body["code"] == "tripwire_budget_tokens"  # type: ignore[index]
    key = f"{tenant}/{task}" if tenant else task
    assert refused.response.headers["x-tripwire-task"] == key
    usage = mock.provider.total_usage.total_tokens
    assert 0 < usage <= 500
    view = proxy.task(key)
    assert view is not None and view.tokens_used == usage and view.agents == ["writer"]
    assert view.tenant == tenant
    assert proxy.task("other-task") is None
    # Each request went out with its cap lowered to what the budget had left.
    caps = [r.body["max_completion_tokens"] for r in mock.provider.requests]
    assert all(cap < 500 for cap in caps)
