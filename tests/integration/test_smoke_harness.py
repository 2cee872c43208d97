import openai

from tests.harness import MockProviderThread, ProxyThread


def test_a_call_passes_through_and_is_accounted(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Task-Id": "t-1"},
    )
    completion = raw.parse()
    assert raw.headers["x-tripwire-task"] == "t-1"
    view = proxy.task("t-1")
    assert view is not None and view.tokens_used == completion.usage.total_tokens
    assert mock.provider.total_hits == 1
