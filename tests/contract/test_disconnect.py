"""A client that gives up on a stream: what the provider generated is still the task's."""

from __future__ import annotations

import pytest

from tests.contract.sdk import KINDS, MODES, ask, assert_generation_stopped
from tests.harness import MockProviderThread, ProxyThread

REPLY_TOKENS = 120
CHUNKS = 40
CHUNK_DELAY = 0.02


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_client_leaving_mid_stream_is_charged_for_what_was_generated(
    proxy: ProxyThread, mock: MockProviderThread, task: str, kind: str, mode: str
) -> None:
    reply = ask(
        kind,
        proxy.base_url,
        mode=mode,
        stream=True,
        headers={
            "X-Task-Id": task,
            "x-mock-reply-tokens": str(REPLY_TOKENS),
            "x-mock-chunks": str(CHUNKS),
            "x-mock-chunk-delay": str(CHUNK_DELAY),
        },
        stop_after=6,
    )
    assert len(reply.items) == 6

    assert_generation_stopped(
        mock.provider, lambda: proxy.task(task), REPLY_TOKENS, CHUNK_DELAY, REPLY_TOKENS // CHUNKS
    )
    billed = mock.provider.total_usage
    assert billed.completion_tokens > 0
    view = proxy.task(task)
    assert view is not None and view.tokens_used > billed.prompt_tokens
