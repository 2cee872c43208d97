"""Azure OpenAI clients through Tripwire with ``openai.AzureOpenAI``, changing only
``azure_endpoint``: tagged, priced as the deployment's model, capped, stopped and cut."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.contract.sdk import assert_generation_stopped, eventually
from tests.harness import MockProviderThread, ProxyThread

DEPLOYMENT = "team-gpt"
API_VERSION = "2024-10-21"
CHAT = f"/openai/deployments/{DEPLOYMENT}/chat/completions"


@pytest.fixture
def proxy(make_proxy: Any, mock: MockProviderThread) -> ProxyThread:
    return _proxy(make_proxy, mock)


def _proxy(make_proxy: Any, mock: MockProviderThread, **sections: Any) -> ProxyThread:
    azure = {
        "base_url": mock.base_url,
        "format": "azure",
        "deployments": {DEPLOYMENT: "gpt-4o-mini"},
        **sections.pop("azure", {}),
    }
    return make_proxy(upstreams={"azure": azure}, **sections)  # type: ignore[no-any-return]


def _client(endpoint: str, **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=endpoint,
        azure_deployment=DEPLOYMENT,
        api_version=API_VERSION,
        api_key=options.pop("api_key", "azure-client-key"),
        http_client=openai.DefaultHttpxClient(verify=False),
        **options,
    )


def _ask(client: openai.OpenAI, stream: bool, **extra: Any) -> str:
    params: dict[str, Any] = {
        "model": DEPLOYMENT,
        "messages": [{"role": "user", "content": "Hello there"}],
        **extra,
    }
    with client:
        if not stream:
            return client.chat.completions.create(**params).choices[0].message.content or ""
        chunks = client.chat.completions.create(stream=True, **params)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_deployment_call_is_tagged_and_priced_as_its_model(
    proxy: ProxyThread, mock: MockProviderThread, task: str, stream: bool
) -> None:
    text = _ask(
        _client(f"{proxy.base_url}/t/{task}/a/writer"),
        stream,
        extra_headers={"x-mock-reply": "drafted"},
    )
    assert text == "drafted"
    (forwarded,) = mock.provider.requests_to(CHAT)
    assert forwarded.query == f"api-version={API_VERSION}"
    assert forwarded.headers["api-key"] == "azure-client-key"
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.agents == ["writer"]
    assert view.tokens_used == mock.provider.total_usage.total_tokens
    assert view.cost_usd > 0  # the deployment name is not a model: priced as gpt-4o-mini
    metrics = httpx.get(f"{proxy.base_url}/metrics", timeout=10).text
    assert 'model="gpt-4o-mini"' in metrics and f'model="{DEPLOYMENT}"' not in metrics


def test_tripwire_s_key_replaces_the_client_s(make_proxy: Any, mock: MockProviderThread) -> None:
    proxy = _proxy(make_proxy, mock, azure={"api_key": "server-key"})
    _ask(_client(proxy.base_url), stream=False)
    (forwarded,) = mock.provider.requests_to(CHAT)
    assert forwarded.headers["api-key"] == "server-key"


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
        assert _ask(_client(proxy.base_url), stream, extra_headers=headers) == "same"
    cap = mock.provider.requests_to(CHAT)[0].body["max_completion_tokens"]
    assert 0 < cap <= 2000
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _ask(_client(proxy.base_url, max_retries=2), stream, extra_headers=headers)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert task in str(refused.value)
    assert mock.provider.total_hits == 3


def test_the_deadline_cuts_a_stream_and_the_sdk_raises(
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
    with pytest.raises(openai.APIError) as cut:
        _ask(_client(proxy.base_url), True, extra_headers=slow)
    assert "deadline" in str(cut.value)
    assert_generation_stopped(mock.provider, lambda: proxy.task(task), 120, 0.02, 2)


def test_the_v1_api_names_the_deployment_in_the_body(
    proxy: ProxyThread, mock: MockProviderThread, task: str
) -> None:
    client = openai.OpenAI(
        base_url=f"{proxy.base_url}/t/{task}/openai/v1",
        api_key="azure-client-key",
        http_client=openai.DefaultHttpxClient(verify=False),
    )
    assert _ask(client, False, extra_headers={"x-mock-reply": "v1 answer"}) == "v1 answer"
    (forwarded,) = mock.provider.requests_to("/openai/v1/chat/completions")
    assert forwarded.body["model"] == DEPLOYMENT  # forwarded as the client named it
    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view and view.cost_usd > 0
