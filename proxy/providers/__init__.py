"""Provider adapters, one per wire format, registered here by format name."""

from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import Adapter, CallInfo, Output, StreamTally, Usage
from proxy.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {"openai": OpenAIAdapter(), "anthropic": AnthropicAdapter()}

__all__ = ["ADAPTERS", "Adapter", "CallInfo", "Output", "StreamTally", "Usage"]
