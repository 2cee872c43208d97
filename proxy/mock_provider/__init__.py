"""A mock LLM provider speaking the OpenAI and Anthropic wire protocols.

The test suite, `tripwire demo` and the benchmarks put it where a real
provider would be; requests are scripted with `x-mock-*` headers (see
`behaviour`). An Anthropic request whose `tool_choice` forces a tool is answered with that
tool's `tool_use` block, its input the scripted reply as JSON; other formats answer text.
"""

from .app import (
    CHAT_COMPLETIONS_PATH,
    MESSAGES_PATH,
    MOCK_PROVIDER_KEY,
    RESPONSES_PATH,
    MockProvider,
    MockProviderThread,
    RecordedRequest,
    TokenUsage,
    build_mock_app,
    start_mock_provider,
)
from .behaviour import (
    CONTROL_HEADERS,
    HEADER_CHUNK_DELAY,
    HEADER_CHUNKS,
    HEADER_DELAY,
    HEADER_MALFORMED,
    HEADER_REPLY,
    HEADER_REPLY_TOKENS,
    HEADER_RESET,
    HEADER_STATUS,
    BehaviourError,
    MockBehaviour,
    parse_behaviour,
)
from .common import count_tokens, prompt_token_count

__all__ = [
    "CHAT_COMPLETIONS_PATH",
    "CONTROL_HEADERS",
    "HEADER_CHUNKS",
    "HEADER_CHUNK_DELAY",
    "HEADER_DELAY",
    "HEADER_MALFORMED",
    "HEADER_REPLY",
    "HEADER_REPLY_TOKENS",
    "HEADER_RESET",
    "HEADER_STATUS",
    "MESSAGES_PATH",
    "MOCK_PROVIDER_KEY",
    "RESPONSES_PATH",
    "BehaviourError",
    "MockBehaviour",
    "MockProvider",
    "MockProviderThread",
    "RecordedRequest",
    "TokenUsage",
    "build_mock_app",
    "count_tokens",
    "parse_behaviour",
    "prompt_token_count",
    "start_mock_provider",
]
