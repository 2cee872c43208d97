"""The mock provider's aiohttp application, its recorded state, and ways to run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, NamedTuple

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import anthropic_wire, bedrock_wire, gemini_wire, legacy, openai_wire
from .behaviour import BehaviourError, MockBehaviour, parse_behaviour
from .common import (
    Completion,
    ParsedRequest,
    RequestError,
    StreamEvent,
    encoding,
    plan_completion,
    reply_text,
)

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"
COMPLETIONS_PATH = "/v1/completions"
BATCHES_PATH = "/v1/messages/batches"

# Long agent transcripts easily exceed aiohttp's 1 MiB default body limit.
MAX_REQUEST_BYTES = 64 * 1024 * 1024

# Handlers still sleeping (x-mock-delay) when a test stops the server are
# cancelled after this long instead of holding up teardown.
SHUTDOWN_TIMEOUT_SECONDS = 0.5

# Deliberately cut mid-object so no JSON parser accepts it.
MALFORMED_BODY = b'{"id": "mock-malformed", "object": "chat.completion", "choices": [{"index'


class RecordedRequest(NamedTuple):
    path: str
    headers: CIMultiDictProxy[str]
    body: Any
    """The parsed JSON body, or None when the body was not valid JSON."""
    query: str = ""


@dataclass(slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class MockProvider:
    """What the mock has been asked and what it has billed.

    Usage is what a real provider would charge: for a stream cut short (by
    the client or by x-mock-reset: mid), only the completion tokens written
    before the cut. Error responses, malformed bodies and JSON responses that
    were never delivered bill nothing. Safe to read from another thread while
    the server runs.
    """

    def __init__(self, defaults: MockBehaviour | None = None) -> None:
        self.defaults = defaults if defaults is not None else MockBehaviour()
        """Behaviour for requests without control headers; headers override it."""
        self.hits: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self.usage: dict[str, TokenUsage] = {}
        self._lock = threading.Lock()

    @property
    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    @property
    def total_usage(self) -> TokenUsage:
        with self._lock:
            return TokenUsage(
                prompt_tokens=sum(u.prompt_tokens for u in self.usage.values()),
                completion_tokens=sum(u.completion_tokens for u in self.usage.values()),
            )

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self.requests[-1] if self.requests else None

    def usage_for(self, path: str) -> TokenUsage:
        with self._lock:
            usage = self.usage.get(path, TokenUsage())
            return TokenUsage(usage.prompt_tokens, usage.completion_tokens)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [record for record in self.requests if record.path == path]

    def reset(self) -> None:
        """Forget all requests and usage; `defaults` is kept."""
        with self._lock:
            self.hits.clear()
            self.requests.clear()
            self.usage.clear()

    def record_request(
        self, path: str, headers: CIMultiDictProxy[str], body: Any, query: str = ""
    ) -> None:
        snapshot = CIMultiDictProxy(CIMultiDict(headers))
        with self._lock:
            self.hits[path] += 1
            self.requests.append(RecordedRequest(path, snapshot, body, query))

    def bill(self, path: str, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            usage = self.usage.setdefault(path, TokenUsage())
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens


MOCK_PROVIDER_KEY = web.AppKey("mock_provider", MockProvider)


@dataclass(frozen=True, slots=True)
class _Protocol:
    parse: Callable[[Any], ParsedRequest]
    body: Callable[[ParsedRequest, Completion], dict[str, Any]]
    stream: Callable[[ParsedRequest, Completion], list[StreamEvent]]
    request_id_header: str
    new_request_id: Callable[[], str]
    status_error: Callable[[int, str], dict[str, Any]]
    invalid_request: Callable[[RequestError, str], dict[str, Any]]
    invalid_json_message: str
    stream_content_type: str = "text/event-stream"


_OPENAI_INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


def _openai(
    parse: Callable[[Any], ParsedRequest],
    body: Callable[[ParsedRequest, Completion], dict[str, Any]],
    stream: Callable[[ParsedRequest, Completion], list[StreamEvent]],
) -> _Protocol:
    return _Protocol(
        parse=parse,
        body=body,
        stream=stream,
        request_id_header="x-request-id",
        new_request_id=openai_wire.request_id,
        status_error=lambda status, _rid: openai_wire.status_error_body(status),
        invalid_request=lambda error, _rid: openai_wire.invalid_request_body(error),
        invalid_json_message=_OPENAI_INVALID_JSON,
    )


_CHAT = _openai(
    openai_wire.parse_chat_request,
    openai_wire.chat_completion_body,
    openai_wire.chat_completion_stream,
)
_RESPONSES = _openai(
    openai_wire.parse_responses_request,
    openai_wire.response_body,
    openai_wire.response_stream,
)
_MESSAGES = _Protocol(
    parse=anthropic_wire.parse_messages_request,
    body=anthropic_wire.message_body,
    stream=anthropic_wire.message_stream,
    request_id_header="request-id",
    new_request_id=anthropic_wire.request_id,
    status_error=anthropic_wire.status_error_body,
    invalid_request=anthropic_wire.invalid_request_body,
    invalid_json_message="There was an error parsing the body of your request: invalid JSON.",
)


_COMPLETIONS = _openai(legacy.parse_completions_request, legacy.completion_body, legacy.no_stream)


def _gemini(model: str, stream: bool, sse: bool) -> _Protocol:
    return _Protocol(
        parse=lambda body: gemini_wire.parse_generate_request(body, model, stream),
        body=gemini_wire.generate_body,
        stream=gemini_wire.sse_stream if sse else gemini_wire.array_stream,
        request_id_header="x-goog-request-id",
        new_request_id=gemini_wire.request_id,
        status_error=gemini_wire.status_error_body,
        invalid_request=gemini_wire.invalid_request_body,
        invalid_json_message=gemini_wire.INVALID_JSON,
        stream_content_type="text/event-stream" if sse else "application/json",
    )


async def _gemini_handler(request: web.Request) -> web.StreamResponse:
    """``.../models/{model}:{method}``, on the Gemini API's paths and Vertex AI's."""
    model, _, method = request.match_info["target"].partition(":")
    if method == "countTokens":
        body = _decode_json(await request.read())
        provider = request.app[MOCK_PROVIDER_KEY]
        provider.record_request(request.path, request.headers, body)
        return web.json_response(gemini_wire.count_tokens_body(body))
    if method not in ("generateContent", "streamGenerateContent"):
        return await _not_found(request)
    stream = method == "streamGenerateContent"
    return await _serve(request, _gemini(model, stream, request.query.get("alt") == "sse"))


def _with_deployment(
    parse: Callable[[Any], ParsedRequest], deployment: str
) -> Callable[[Any], ParsedRequest]:
    """Azure names the model by its deployment in the path; a body may leave ``model`` out."""

    def parse_body(body: Any) -> ParsedRequest:
        if isinstance(body, dict) and not body.get("model"):
            body = {**body, "model": deployment}
        return parse(body)

    return parse_body


async def _azure_handler(request: web.Request) -> web.StreamResponse:
    """``/openai/deployments/{deployment}/...`` (Azure OpenAI's deployment paths)."""
    protocol = _CHAT if request.match_info["method"] == "chat/completions" else _RESPONSES
    deployment = request.match_info["deployment"]
    return await _serve(
        request, replace(protocol, parse=_with_deployment(protocol.parse, deployment))
    )


async def _bedrock_handler(request: web.Request) -> web.StreamResponse:
    """``/model/{modelId}/converse`` and ``converse-stream`` (Bedrock Runtime)."""
    model = request.match_info["model"]
    stream = request.match_info["method"] == "converse-stream"
    protocol = _Protocol(
        parse=lambda body: bedrock_wire.parse_converse_request(body, model, stream),
        body=bedrock_wire.converse_body,
        stream=bedrock_wire.converse_stream,
        request_id_header="x-amzn-RequestId",
        new_request_id=bedrock_wire.request_id,
        status_error=bedrock_wire.status_error_body,
        invalid_request=bedrock_wire.invalid_request_body,
        invalid_json_message=bedrock_wire.INVALID_JSON,
        stream_content_type=bedrock_wire.EVENT_STREAM,
    )
    return await _serve(request, protocol)


class _InvalidJson:
    pass


_INVALID_JSON = _InvalidJson()


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID_JSON


def _drop_connection(request: web.BaseRequest) -> None:
    # close() rather than abort(): bytes already written still reach the
    # client, then it sees the connection end mid-response.
    transport = request.transport
    if transport is not None:
        transport.close()


def _handler(protocol: _Protocol) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve(request, protocol)

    return handle


async def _serve(request: web.Request, protocol: _Protocol) -> web.StreamResponse:
    provider = request.app[MOCK_PROVIDER_KEY]
    body = _decode_json(await request.read())
    provider.record_request(
        request.path,
        request.headers,
        None if body is _INVALID_JSON else body,
        request.query_string,
    )
    request_id = protocol.new_request_id()
    headers = {protocol.request_id_header: request_id}

    def error(status: int, payload: dict[str, Any]) -> web.Response:
        extra = {"retry-after": "0"} if status == 429 else {}
        return web.json_response(payload, status=status, headers={**headers, **extra})

    try:
        behaviour = parse_behaviour(request.headers, provider.defaults)
    except BehaviourError as exc:
        return error(400, protocol.invalid_request(RequestError(str(exc)), request_id))
    if behaviour.delay:
        await asyncio.sleep(behaviour.delay)
    if behaviour.reset == "before":
        _drop_connection(request)
        return web.Response(status=500)  # Never reaches the closed connection.
    if behaviour.status is not None:
        return error(behaviour.status, protocol.status_error(behaviour.status, request_id))
    if behaviour.malformed:
        return web.Response(body=MALFORMED_BODY, content_type="application/json", headers=headers)
    if body is _INVALID_JSON:
        invalid = RequestError(protocol.invalid_json_message)
        return error(400, protocol.invalid_request(invalid, request_id))
    try:
        parsed = protocol.parse(body)
    except RequestError as exc:
        return error(400, protocol.invalid_request(exc, request_id))

    if protocol is _MESSAGES and anthropic_wire.forced_tool(parsed.body) is not None:
        # A forced tool's input is JSON; the reply is sized and streamed as that JSON.
        scripted = anthropic_wire.tool_input_text(reply_text(behaviour, parsed.last_user_text))
        behaviour = replace(behaviour, reply=scripted, reply_tokens=None)
    completion = plan_completion(behaviour, parsed.last_user_text, parsed.cap)
    if parsed.stream:
        return await _stream(
            request, protocol, protocol.stream(parsed, completion), parsed, behaviour, headers
        )
    payload = protocol.body(parsed, completion)
    if behaviour.reset == "mid":
        return await _send_half(request, payload, headers)
    provider.bill(
        request.path,
        prompt_tokens=parsed.prompt_tokens,
        completion_tokens=completion.tokens * parsed.choices,
    )
    return web.json_response(payload, headers=headers)


async def _batches(request: web.Request) -> web.Response:
    """A Message Batch: every item is run (later, by the real API) and billed as the
    Messages call it is; the answer carries no usage."""
    provider = request.app[MOCK_PROVIDER_KEY]
    body = _decode_json(await request.read())
    provider.record_request(request.path, request.headers, None if body is _INVALID_JSON else body)
    headers = {_MESSAGES.request_id_header: _MESSAGES.new_request_id()}
    try:
        behaviour = parse_behaviour(request.headers, provider.defaults)
        items = legacy.batch_items(None if body is _INVALID_JSON else body)
    except (BehaviourError, RequestError) as exc:
        error = exc if isinstance(exc, RequestError) else RequestError(str(exc))
        payload = _MESSAGES.invalid_request(error, headers["request-id"])
        return web.json_response(payload, status=400, headers=headers)
    for item in items:
        completion = plan_completion(behaviour, item.last_user_text, item.cap)
        provider.bill(
            request.path, prompt_tokens=item.prompt_tokens, completion_tokens=completion.tokens
        )
    return web.json_response(legacy.batch_body(len(items)), headers=headers)


async def _stream(
    request: web.Request,
    protocol: _Protocol,
    events: list[StreamEvent],
    parsed: ParsedRequest,
    behaviour: MockBehaviour,
    headers: dict[str, str],
) -> web.StreamResponse:
    provider = request.app[MOCK_PROVIDER_KEY]
    cut_after = _cut_point(events) if behaviour.reset == "mid" else None
    response = web.StreamResponse(headers={**headers, "cache-control": "no-cache"})
    response.content_type = protocol.stream_content_type
    response.charset = "utf-8"
    try:
        await response.prepare(request)
        provider.bill(request.path, prompt_tokens=parsed.prompt_tokens)
        for index, event in enumerate(events):
            if index and behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            await response.write(event.data)
            # Billed once written, so a client that disconnects is charged for
            # exactly the deltas it was sent.
            if event.tokens:
                provider.bill(request.path, completion_tokens=event.tokens)
            if index == cut_after:
                _drop_connection(request)
                return response
        if behaviour.linger:
            await asyncio.sleep(behaviour.linger)
        await response.write_eof()
    except ConnectionError:
        pass  # The client left; usage already holds what it was sent.
    return response


def _cut_point(events: list[StreamEvent]) -> int:
    """Index of the event after which x-mock-reset: mid drops the connection:
    half-way through the content deltas, before the stream's final events."""
    deltas = [index for index, event in enumerate(events) if event.is_delta]
    if deltas:
        return deltas[(len(deltas) - 1) // 2]
    return max(0, len(events) // 2 - 1)


async def _send_half(
    request: web.Request, payload: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    data = json.dumps(payload).encode()
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/json"
    response.content_length = len(data)
    try:
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
    except ConnectionError:
        return response
    _drop_connection(request)
    return response


async def _not_found(request: web.Request) -> web.StreamResponse:
    provider = request.app[MOCK_PROVIDER_KEY]
    body = _decode_json(await request.read())
    provider.record_request(request.path, request.headers, None if body is _INVALID_JSON else body)
    payload = openai_wire.invalid_url_body(request.method, request.path)
    return web.json_response(
        payload, status=404, headers={"x-request-id": openai_wire.request_id()}
    )


def build_mock_app(provider: MockProvider | None = None) -> web.Application:
    """The mock provider as an aiohttp application; its state is at
    `app[MOCK_PROVIDER_KEY]`."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[MOCK_PROVIDER_KEY] = provider if provider is not None else MockProvider()
    app.router.add_post(CHAT_COMPLETIONS_PATH, _handler(_CHAT))
    app.router.add_post(RESPONSES_PATH, _handler(_RESPONSES))
    app.router.add_post(MESSAGES_PATH, _handler(_MESSAGES))
    app.router.add_post(COMPLETIONS_PATH, _handler(_COMPLETIONS))
    app.router.add_post(BATCHES_PATH, _batches)
    app.router.add_post("/model/{model}/{method:converse|converse-stream}", _bedrock_handler)
    app.router.add_post("/openai/v1/chat/completions", _handler(_CHAT))
    app.router.add_post("/openai/v1/responses", _handler(_RESPONSES))
    app.router.add_post(
        "/openai/deployments/{deployment}/{method:chat/completions|responses}", _azure_handler
    )
    app.router.add_post("/{version:v1[a-z0-9]*}/models/{target}", _gemini_handler)
    app.router.add_post(
        "/{version:v1[a-z0-9]*}/projects/{project}/locations/{location}"
        "/publishers/google/models/{target}",
        _gemini_handler,
    )
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def start_mock_provider(
    host: str = "127.0.0.1", port: int = 0, *, provider: MockProvider | None = None
) -> tuple[web.AppRunner, MockProvider, str]:
    """Serve the mock on `host:port` (0 picks a free port).

    Returns the runner (call `await runner.cleanup()` to stop), the provider
    state and the base URL without a trailing slash.
    """
    # Loading the tokenizer takes long enough to trip a short client timeout
    # on the first request, so it is done before the port opens.
    await asyncio.to_thread(encoding)
    app = build_mock_app(provider)
    runner = web.AppRunner(
        app,
        # A client that disconnects stops "generation", as with a real provider.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    url_host = f"[{host}]" if ":" in host else host
    return runner, app[MOCK_PROVIDER_KEY], f"http://{url_host}:{bound_port}"


class MockProviderThread:
    """The mock served from its own event loop in a background thread, for
    tests that drive it with synchronous clients. Starts on construction."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        provider: MockProvider | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._provider = provider
        self._base_url = ""
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, args=(host, port), name="mock-provider", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(start_timeout):
            self.stop()
            raise TimeoutError("mock provider did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def provider(self) -> MockProvider:
        if self._provider is None:
            raise RuntimeError("mock provider is not running")
        return self._provider

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and self._thread.is_alive():
            # RuntimeError: the loop already finished on its own.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> MockProviderThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, host: str, port: int) -> None:
        asyncio.run(self._main(host, port))

    async def _main(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            runner, provider, base_url = await start_mock_provider(
                host, port, provider=self._provider
            )
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._provider, self._base_url = provider, base_url
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
