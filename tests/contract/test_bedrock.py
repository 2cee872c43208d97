"""Bedrock Converse clients through Tripwire with boto3's ``bedrock-runtime``, changing only
``endpoint_url``: tagged, priced, capped, stopped and cut; keys and SigV4 handled upstream."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EventStreamError

from tests.contract.sdk import assert_generation_stopped, eventually
from tests.harness import MockProviderThread, ProxyThread

MODEL = "us.amazon.nova-lite-v1:0"
CONVERSE = f"/model/{MODEL}/converse"
STREAM = f"/model/{MODEL}/converse-stream"
MESSAGES = [{"role": "user", "content": [{"text": "Hello there"}]}]


def _proxy(make_proxy: Any, mock: MockProviderThread, **sections: Any) -> ProxyThread:
    bedrock = {"base_url": mock.base_url, "format": "bedrock", **sections.pop("bedrock", {})}
    return make_proxy(upstreams={"bedrock": bedrock}, **sections)  # type: ignore[no-any-return]


@pytest.fixture
def proxy(make_proxy: Any, mock: MockProviderThread) -> ProxyThread:
    return _proxy(make_proxy, mock)


def _client(endpoint: str, headers: dict[str, str] | None = None, retries: int = 1) -> Any:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDCLIENT",
        aws_secret_access_key="client-secret",
        config=BotoConfig(retries={"max_attempts": retries, "mode": "standard"}),
    )

    def add_headers(request: Any, **_: Any) -> None:
        for name, value in (headers or {}).items():
            request.headers[name] = value

    client.meta.events.register_first("before-sign.bedrock-runtime.*", add_headers)
    return client


def _converse(client: Any, stream: bool, **extra: Any) -> tuple[str, int]:
    """One call; the client is closed after it."""
    try:
        return _call(client, stream, **extra)
    finally:
        client.close()


def _call(client: Any, stream: bool, **extra: Any) -> tuple[str, int]:
    if not stream:
        answer = client.converse(modelId=MODEL, messages=MESSAGES, **extra)
        return answer["output"]["message"]["content"][0]["text"], answer["usage"]["totalTokens"]
    texts: list[str] = []
    usage = 0
    events = client.converse_stream(modelId=MODEL, messages=MESSAGES, **extra)["stream"]
    try:
        for event in events:
            if "contentBlockDelta" in event:
                texts.append(event["contentBlockDelta"]["delta"]["text"])
            if "metadata" in event:
                usage = event["metadata"]["usage"]["totalTokens"]
    finally:
        events.close()
    return "".join(texts), usage


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_converse_call_is_tagged_booked_and_priced(
    proxy: ProxyThread, mock: MockProviderThread, task: str, stream: bool
) -> None:
    client = _client(f"{proxy.base_url}/t/{task}/a/analyst", {"x-mock-reply": "found it"})
    text, usage = _converse(client, stream)
    assert text == "found it"
    assert usage == mock.provider.total_usage.total_tokens
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.agents == ["analyst"]
    assert view.tokens_used == usage  # from usage / the metadata event
    assert view.cost_usd > 0  # priced as Amazon Nova Lite
    (forwarded,) = mock.provider.requests_to(STREAM if stream else CONVERSE)
    assert "AKIDCLIENT" in forwarded.headers["Authorization"]  # no key held: passed on as is


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_cap_is_lowered_and_a_loop_is_refused_without_retries(
    make_proxy: Any, mock: MockProviderThread, task: str, stream: bool
) -> None:
    proxy = _proxy(
        make_proxy,
        mock,
        policy={"rules": [{"match": {"task": task}, "limits": {"max_tokens": 2000}}]},
    )
    headers = {"X-Task-Id": task, "x-mock-reply": "same"}
    for _ in range(3):
        assert _converse(_client(proxy.base_url, headers), stream)[0] == "same"
    path = STREAM if stream else CONVERSE
    assert 0 < mock.provider.requests_to(path)[0].body["inferenceConfig"]["maxTokens"] <= 2000
    sent: list[Any] = []
    client = _client(proxy.base_url, headers, retries=5)
    client.meta.events.register("before-send.bedrock-runtime.*", lambda **kw: sent.append(kw))
    with pytest.raises(ClientError) as refused:
        _converse(client, stream)
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDeniedException" and task in error["Message"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert len(sent) == 1  # standard retries on, and still one request
    assert mock.provider.total_hits == 3


def test_the_deadline_cuts_a_stream_with_an_exception_event(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    proxy = _proxy(
        make_proxy,
        mock,
        policy={"rules": [{"match": {"task": task}, "limits": {"max_duration": 0.3}}]},
    )
    slow = {
        "X-Task-Id": task,
        "x-mock-reply-tokens": "120",
        "x-mock-chunks": "60",
        "x-mock-chunk-delay": "0.02",
    }
    with pytest.raises(EventStreamError) as cut:
        _converse(_client(proxy.base_url, slow), True)
    assert "deadline" in str(cut.value) and task in str(cut.value)
    assert_generation_stopped(mock.provider, lambda: proxy.task(task), 120, 0.02, 2)


def test_a_bedrock_api_key_replaces_the_client_s_signature(
    make_proxy: Any, mock: MockProviderThread
) -> None:
    proxy = _proxy(make_proxy, mock, bedrock={"api_key": "bedrock-api-key"})
    _converse(_client(proxy.base_url), False)
    (forwarded,) = mock.provider.requests_to(CONVERSE)
    assert forwarded.headers["Authorization"] == "Bearer bedrock-api-key"
    assert "X-Amz-Date" not in forwarded.headers


def test_tripwire_re_signs_with_its_own_aws_credentials_for_the_real_host(
    make_proxy: Any, mock: MockProviderThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSERVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    proxy = _proxy(make_proxy, mock, bedrock={"aws_sigv4": {"region": "us-west-2"}})
    client = _client(proxy.base_url)
    bodies: list[bytes] = []
    client.meta.events.register(
        "before-send.bedrock-runtime.*", lambda request, **_: bodies.append(request.body)
    )
    _converse(client, False)
    (forwarded,) = mock.provider.requests_to(CONVERSE)
    authorization = forwarded.headers["Authorization"]
    assert "Credential=AKIDSERVER/" in authorization and "/us-west-2/bedrock/" in authorization
    # The signature holds for the upstream's host and the bytes sent: recompute it.
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "host" in signed
    request = AWSRequest(
        method="POST",
        url=f"{mock.base_url}/model/{quote(MODEL, safe='')}/converse",
        data=bodies[0],
        headers={name: forwarded.headers[name] for name in signed if name != "host"},
    )
    request.context["timestamp"] = forwarded.headers["X-Amz-Date"]
    auth = SigV4Auth(Credentials("AKIDSERVER", "server-secret"), "bedrock", "us-west-2")
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert authorization.endswith(f"Signature={signature}")


def test_a_strands_agent_repeating_itself_is_stopped_by_its_endpoint_alone(
    proxy: ProxyThread, mock: MockProviderThread, task: str
) -> None:
    from strands import Agent
    from strands.models import BedrockModel

    session = boto3.Session(
        aws_access_key_id="AKIDCLIENT",
        aws_secret_access_key="client-secret",
        region_name="us-east-1",
    )
    model = BedrockModel(
        model_id=MODEL,
        boto_session=session,
        endpoint_url=f"{proxy.base_url}/t/{task}/a/researcher",
    )
    agent = Agent(model=model, callback_handler=None)
    try:
        for _ in range(3):
            agent.messages.clear()  # the same question each turn: the same answer back
            assert "Answer to: look it up" in str(agent("look it up"))
        agent.messages.clear()
        with pytest.raises(Exception) as stopped:
            agent("look it up")
    finally:
        model.client.close()
    assert task in str(stopped.value) and "AccessDenied" in repr(stopped.value) + str(stopped.value)
    assert mock.provider.total_hits == 3
    view = proxy.task(task)
    assert view is not None and view.killed is not None and view.agents == ["researcher"]
