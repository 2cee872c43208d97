"""One call of any API kind through the official SDKs, with a sync or an async client.

``ask(kind, root, ...)`` builds a client aimed at ``root`` (the proxy's root URL, or a URL
prefix such as ``{root}/t/job/a/planner``), makes one call, closes the client and returns what
the SDK produced: the completion text, the provider-reported usage as the SDK parsed it, the
response headers and the stream items. SDK exceptions propagate unchanged.

Kinds: ``chat`` (OpenAI Chat Completions), ``responses`` (OpenAI Responses API) and
``messages`` (Anthropic Messages). Modes: ``sync`` and ``async``; an async call runs on a
fresh event loop so the same test body can drive either client.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai

OPENAI_MODEL = "gpt-4o-mini"
# A model name the installed SDK does not warn about (filterwarnings = error).
CLAUDE_MODEL = "claude-sonnet-4-6"
CLAUDE_MAX_TOKENS = 1024

KINDS = ("chat", "responses", "messages")
MODES = ("sync", "async")

SDK_DEFAULT = object()  # pass as max_retries to leave the SDK's default retries in place


def errors_of(kind: str) -> Any:
    """The exceptions module of the SDK that serves ``kind``."""
    return anthropic if kind == "messages" else openai


def make_client(
    kind: str,
    root: str,
    *,
    mode: str = "sync",
    max_retries: Any = 0,
    api_key: str = "sk-test",
    on_request: Callable[[], None] | None = None,
) -> Any:
    """A client of the SDK serving ``kind``; ``on_request`` runs for every HTTP request the
    SDK sends, retries included.

    The HTTP client is the SDK's default one, minus certificate loading: every URL here is
    plain http, and loading the CA bundle would dominate the suite's run time.
    """
    options: dict[str, Any] = {"api_key": api_key}
    if max_retries is not SDK_DEFAULT:
        options["max_retries"] = max_retries
    sdk = errors_of(kind)
    hooks: dict[str, list[Any]] = {}
    if mode == "sync":
        if on_request is not None:
            hooks["request"] = [lambda _request: on_request()]
        options["http_client"] = sdk.DefaultHttpxClient(verify=False, event_hooks=hooks)
    else:
        if on_request is not None:

            async def hook(_request: Any) -> None:
                on_request()

            hooks["request"] = [hook]
        options["http_client"] = sdk.DefaultAsyncHttpxClient(verify=False, event_hooks=hooks)
    if kind == "messages":
        cls = anthropic.Anthropic if mode == "sync" else anthropic.AsyncAnthropic
        return cls(base_url=root, **options)
    cls = openai.OpenAI if mode == "sync" else openai.AsyncOpenAI
    return cls(base_url=root + "/v1", **options)


def resource(client: Any, kind: str) -> Any:
    if kind == "chat":
        return client.chat.completions
    if kind == "responses":
        return client.responses
    return client.messages


def params_for(
    kind: str,
    *,
    prompt: str = "Hello there",
    stream: bool = False,
    system: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The request parameters of one call, as an agent would pass them to its SDK."""
    params: dict[str, Any]
    if kind == "chat":
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        params = {"model": OPENAI_MODEL, "messages": messages}
    elif kind == "responses":
        params = {"model": OPENAI_MODEL, "input": prompt}
        if system is not None:
            params["instructions"] = system
    else:
        params = {
            "model": CLAUDE_MODEL,
            "max_tokens": CLAUDE_MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system is not None:
            params["system"] = system
    if stream:
        params["stream"] = True
    params.update(extra)
    return params


@dataclass
class Reply:
    status: int
    headers: httpx2.Headers
    text: str
    usage: int | None  # total tokens the provider reported, as the SDK parsed them
    items: list[Any] = field(default_factory=list)  # stream chunks/events, in order
    body: bytes = b""  # the raw body of a JSON answer


def _chat_stream(items: list[Any]) -> tuple[str, int | None]:
    texts: list[str] = []
    usage: int | None = None
    for chunk in items:
        texts.extend(c.delta.content for c in chunk.choices if c.delta.content)
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
    return "".join(texts), usage


def _responses_stream(items: list[Any]) -> tuple[str, int | None]:
    texts: list[str] = []
    usage: int | None = None
    for item in items:
        if item.type == "response.output_text.delta":
            texts.append(item.delta)
        elif item.type in ("response.completed", "response.incomplete"):
            usage = item.response.usage.total_tokens
    return "".join(texts), usage


def _messages_stream(items: list[Any]) -> tuple[str, int | None]:
    texts: list[str] = []
    usage: int | None = None
    prompt = 0
    for item in items:
        if item.type == "message_start":
            prompt = item.message.usage.input_tokens
        elif item.type == "content_block_delta" and item.delta.type == "text_delta":
            texts.append(item.delta.text)
        elif item.type == "message_delta":
            usage = prompt + item.usage.output_tokens
    return "".join(texts), usage


def summarize_stream(kind: str, items: list[Any]) -> tuple[str, int | None]:
    """The completion text and the reported usage of a stream, from the SDK's items."""
    if kind == "chat":
        return _chat_stream(items)
    if kind == "responses":
        return _responses_stream(items)
    return _messages_stream(items)


def summarize_body(kind: str, parsed: Any) -> tuple[str, int | None]:
    if kind == "chat":
        usage = parsed.usage.total_tokens if parsed.usage else None
        return parsed.choices[0].message.content or "", usage
    if kind == "responses":
        return parsed.output_text, parsed.usage.total_tokens if parsed.usage else None
    text = "".join(block.text for block in parsed.content if block.type == "text")
    return text, parsed.usage.input_tokens + parsed.usage.output_tokens


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _call_sync(
    client: Any,
    kind: str,
    params: dict[str, Any],
    headers: Mapping[str, str],
    stop_after: int | None,
    on_item: Callable[[Any], None] | None,
) -> Reply:
    raw = resource(client, kind).with_raw_response.create(**params, extra_headers=dict(headers))
    parsed = raw.parse()
    http = raw.http_response
    if not params.get("stream"):
        text, usage = summarize_body(kind, parsed)
        return Reply(http.status_code, http.headers, text, usage, body=http.content)
    items: list[Any] = []
    try:
        for item in parsed:
            items.append(item)
            if on_item is not None:
                on_item(item)
            if stop_after is not None and len(items) >= stop_after:
                break
    finally:
        parsed.close()
    text, usage = summarize_stream(kind, items)
    return Reply(http.status_code, http.headers, text, usage, items)


async def _call_async(
    client: Any,
    kind: str,
    params: dict[str, Any],
    headers: Mapping[str, str],
    stop_after: int | None,
    on_item: Callable[[Any], None] | None,
) -> Reply:
    raw = await resource(client, kind).with_raw_response.create(
        **params, extra_headers=dict(headers)
    )
    parsed = await _maybe_await(raw.parse())
    http = raw.http_response
    if not params.get("stream"):
        text, usage = summarize_body(kind, parsed)
        return Reply(http.status_code, http.headers, text, usage, body=http.content)
    items: list[Any] = []
    try:
        async for item in parsed:
            items.append(item)
            if on_item is not None:
                on_item(item)
            if stop_after is not None and len(items) >= stop_after:
                break
    finally:
        await parsed.close()
    text, usage = summarize_stream(kind, items)
    return Reply(http.status_code, http.headers, text, usage, items)


def ask(
    kind: str,
    root: str,
    *,
    mode: str = "sync",
    headers: Mapping[str, str] | None = None,
    max_retries: Any = 0,
    api_key: str = "sk-test",
    on_request: Callable[[], None] | None = None,
    stop_after: int | None = None,
    on_item: Callable[[Any], None] | None = None,
    **params: Any,
) -> Reply:
    """One call; ``params`` go to ``params_for`` (``stream=True`` for a streaming call).

    ``stop_after``: close the stream after that many items, as a client that gives up does.
    """
    body = params_for(kind, **params)
    if mode == "sync":
        with make_client(
            kind, root, max_retries=max_retries, api_key=api_key, on_request=on_request
        ) as client:
            return _call_sync(client, kind, body, headers or {}, stop_after, on_item)

    async def run() -> Reply:
        async with make_client(
            kind,
            root,
            mode="async",
            max_retries=max_retries,
            api_key=api_key,
            on_request=on_request,
        ) as client:
            return await _call_async(client, kind, body, headers or {}, stop_after, on_item)

    return asyncio.run(run())


@dataclass
class RawStream:
    status: int
    headers: httpx2.Headers
    data: bytes  # the response body exactly as the client received it


def raw_stream(
    kind: str,
    root: str,
    *,
    mode: str = "sync",
    headers: Mapping[str, str] | None = None,
    **params: Any,
) -> RawStream:
    """A streaming call whose body is read as bytes, unparsed (``with_streaming_response``)."""
    body = params_for(kind, stream=True, **params)
    extra = dict(headers or {})
    if mode == "sync":
        with (
            make_client(kind, root) as client,
            resource(client, kind).with_streaming_response.create(
                **body, extra_headers=extra
            ) as response,
        ):
            data = b"".join(response.iter_bytes())
            return RawStream(response.status_code, response.headers, data)

    async def run() -> RawStream:
        async with (
            make_client(kind, root, mode="async") as client,
            resource(client, kind).with_streaming_response.create(
                **body, extra_headers=extra
            ) as response,
        ):
            data = b"".join([chunk async for chunk in response.iter_bytes()])
            return RawStream(response.status_code, response.headers, data)

    return asyncio.run(run())


def sse_events(data: bytes) -> list[bytes]:
    """A stream body split into its events, each with its terminating blank line."""
    return [event + b"\n\n" for event in data.split(b"\n\n") if event]


def eventually(check: Callable[[], Any], timeout: float = 2.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; return that, or the last falsy value.

    For figures the proxy books once it notices a stream ended, a moment after the client did.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def assert_generation_stopped(
    provider: Any,
    task_view: Callable[[], Any],
    full_reply_tokens: int,
    chunk_delay: float,
    delta_tokens: int,
) -> None:
    """The provider stopped generating soon after the proxy gave up on the stream, and the
    task has been charged for what the provider billed.

    ``provider`` is the mock's recorder; ``task_view`` returns the task's ``TaskView``. The
    provider's figures are read once they have stopped moving. A delta the provider sent while
    the proxy was closing the connection is billed yet never reaches the proxy, so the task may
    be short of the provider's figure by one delta (``delta_tokens``), never more.
    """
    view = eventually(lambda: (v := task_view()) and v.tokens_reserved == 0 and v)
    assert view, task_view()
    time.sleep(3 * chunk_delay)
    billed = provider.total_usage
    time.sleep(3 * chunk_delay)  # a provider still generating would bill a few more deltas
    assert provider.total_usage == billed, "the provider kept generating"
    assert billed.completion_tokens < full_reply_tokens
    view = task_view()
    assert view.tokens_used >= billed.total_tokens - delta_tokens, (view, billed)
