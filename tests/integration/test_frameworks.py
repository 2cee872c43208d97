"""Real agent frameworks pointed at Tripwire by their base URL alone."""

from __future__ import annotations

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled
from langchain_openai import ChatOpenAI

from tests.harness import MockProviderThread, ProxyThread


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    set_tracing_disabled(True)


async def test_openai_agents_sdk_agent_is_tagged_accounted_and_stopped(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    client = openai.AsyncOpenAI(
        base_url=proxy.openai_url,
        api_key="sk-agents",
        default_headers={"X-Task-Id": "agents-sdk-1", "x-mock-reply": "I will look into it."},
    )
    agent = Agent(
        name="researcher",
        instructions="You research things.",
        model=OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client),
    )
    for _ in range(3):
        result = await Runner.run(agent, "What is new?")
        assert result.final_output == "I will look into it."
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await Runner.run(agent, "What is new?")
    assert "repeat_output" in refused.value.message
    view = proxy.task("agents-sdk-1")
    assert view is not None and view.agents[0].startswith("sys:")
    assert view.tokens_used == mock.provider.usage_for("/v1/responses").total_tokens
    assert mock.provider.total_hits == 3
    await client.close()


def test_langchain_chat_model_streams_through_with_usage_accounted(
    proxy: ProxyThread, mock: MockProviderThread
) -> None:
    model = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=proxy.base_url + "/t/lc-1/a/writer/v1",
        api_key="sk-langchain",  # type: ignore[arg-type]
        max_retries=0,
    )
    answer = model.invoke("Write one line.")
    chunks = list(model.stream("Write another line."))
    assert answer.content and "".join(str(c.content) for c in chunks)
    view = proxy.task("lc-1")
    assert view is not None and view.agents == ["writer"]
    assert view.tokens_used == mock.provider.total_usage.total_tokens
