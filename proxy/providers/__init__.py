"""Provider adapters, one per wire format, registered here by format name: the one line a new
format adds (with its module here and its mock in ``proxy/mock_provider/``)."""

from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.azure import AzureOpenAIAdapter
from proxy.providers.base import Adapter, CallInfo, Output, StreamTally, Usage
from proxy.providers.bedrock import BedrockAdapter
from proxy.providers.gemini import GeminiAdapter
from proxy.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "azure": AzureOpenAIAdapter(),
    "bedrock": BedrockAdapter(),
}

# The format of Tripwire's answer to a path no upstream serves.
DEFAULT_FORMAT = "openai"

# Which adapter reads each request kind; kinds are unique across adapters.
_BY_KIND: dict[str, Adapter] = {kind: a for a in ADAPTERS.values() for kind in a.kinds}


def adapter_for_kind(kind: str) -> Adapter | None:
    return _BY_KIND.get(kind)


__all__ = [
    "ADAPTERS",
    "DEFAULT_FORMAT",
    "Adapter",
    "CallInfo",
    "Output",
    "StreamTally",
    "Usage",
    "adapter_for_kind",
]
