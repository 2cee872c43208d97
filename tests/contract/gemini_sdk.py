"""One Gemini call through the official ``google-genai`` SDK, sync or async, JSON or stream,
with the client's base URL pointed at Tripwire (``http_options.base_url``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from google import genai
from google.genai import types

GEMINI_MODEL = "gemini-2.5-flash"


@dataclass
class GeminiReply:
    text: str
    usage: int | None  # total tokens the provider reported
    headers: Mapping[str, str]
    chunks: list[Any] = field(default_factory=list)


def client(
    root: str,
    *,
    mode: str = "sync",
    headers: Mapping[str, str] | None = None,
    retries: bool = False,
    on_request: Callable[[], None] | None = None,
    api_key: str = "gemini-test-key",
) -> genai.Client:
    """``retries``: the SDK's own retry policy (5 attempts on 408, 429 and 5xx). The caller
    closes the HTTP client, which the SDK leaves open when it is given one."""
    hooks: dict[str, list[Any]] = {}
    http: dict[str, Any] = {}
    if mode == "sync":
        if on_request is not None:
            hooks["request"] = [lambda _request: on_request()]
        http["httpx_client"] = httpx.Client(event_hooks=hooks, timeout=30)
    else:
        if on_request is not None:

            async def hook(_request: Any) -> None:
                on_request()

            hooks["request"] = [hook]
        http["httpx_async_client"] = httpx.AsyncClient(event_hooks=hooks, timeout=30)
    options = types.HttpOptions(
        base_url=root,
        headers=dict(headers or {}),
        retry_options=types.HttpRetryOptions(initial_delay=0.05, max_delay=0.1)
        if retries
        else None,
        **http,
    )
    return genai.Client(api_key=api_key, http_options=options)


def generate(
    root: str,
    *,
    mode: str = "sync",
    stream: bool = False,
    prompt: str = "Hello there",
    config: types.GenerateContentConfig | None = None,
    on_chunk: Callable[[Any], None] | None = None,
    **options: Any,
) -> GeminiReply:
    sdk = client(root, mode=mode, **options)
    http = sdk._api_client._http_options
    if mode == "sync":
        try:
            return _sync(sdk, stream, prompt, config, on_chunk)
        finally:
            assert http.httpx_client is not None
            http.httpx_client.close()

    async def run() -> GeminiReply:
        try:
            return await _async(sdk, stream, prompt, config, on_chunk)
        finally:
            assert http.httpx_async_client is not None
            await http.httpx_async_client.aclose()

    return asyncio.run(run())


def _reply(chunks: list[Any]) -> GeminiReply:
    text = "".join(c.text or "" for c in chunks)
    usage = next(
        (c.usage_metadata.total_token_count for c in reversed(chunks) if c.usage_metadata),
        None,
    )
    last = chunks[-1].sdk_http_response if chunks else None
    headers = dict(last.headers or {}) if last is not None else {}
    return GeminiReply(text, usage, headers, chunks)


def _sync(
    sdk: genai.Client,
    stream: bool,
    prompt: str,
    config: types.GenerateContentConfig | None,
    on_chunk: Callable[[Any], None] | None,
) -> GeminiReply:
    with sdk:
        if not stream:
            return _reply(
                [sdk.models.generate_content(model=GEMINI_MODEL, contents=prompt, config=config)]
            )
        chunks: list[Any] = []
        for chunk in sdk.models.generate_content_stream(
            model=GEMINI_MODEL, contents=prompt, config=config
        ):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        return _reply(chunks)


async def _async(
    sdk: genai.Client,
    stream: bool,
    prompt: str,
    config: types.GenerateContentConfig | None,
    on_chunk: Callable[[Any], None] | None,
) -> GeminiReply:
    async with sdk.aio as aio:
        if not stream:
            return _reply(
                [
                    await aio.models.generate_content(
                        model=GEMINI_MODEL, contents=prompt, config=config
                    )
                ]
            )
        chunks: list[Any] = []
        async for chunk in await aio.models.generate_content_stream(
            model=GEMINI_MODEL, contents=prompt, config=config
        ):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        return _reply(chunks)
