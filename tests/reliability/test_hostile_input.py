"""Hostile input, from agents and from providers: truncated, oversized, non-UTF-8, deeply
nested, wrongly typed, duplicated keys, events split at every byte boundary. Tripwire never
crashes, answers what it refuses with an error in the provider's format, relays what the
provider sent unchanged, and accounts the usage of what reached the client."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.providers import ADAPTERS, CallInfo
from proxy.server.sse import SSEDecoder
from proxy.server.streaming import StreamRelay
from proxy.tokens import count_text, estimate_prompt
from tests.harness import MockProviderThread, ProxyThread, proxy_config
from tests.reliability.conftest import LogLines
from tests.reliability.upstream import Scripted, ScriptedUpstream

PATHS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
}
ADAPTER_OF = {"chat": "openai", "responses": "openai", "messages": "anthropic"}
SHAPE_ERRORS = (TypeError, ValueError, AttributeError, LookupError, RecursionError)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def valid_body(kind: str, *, stream: bool = False, text: str = "Hello there") -> dict[str, Any]:
    if kind == "chat":
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
    elif kind == "responses":
        body = {"model": "gpt-4o-mini", "input": text}
    else:
        body = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        }
    if stream:
        body["stream"] = True
    return body


@pytest.fixture(scope="module")
def real_streams(mock_thread: MockProviderThread) -> dict[str, bytes]:
    """One stream of each kind, as the mock provider (speaking each format) sends it."""
    streams = {}
    with httpx2.Client() as client:
        for kind, path in PATHS.items():
            response = client.post(
                mock_thread.base_url + path,
                json=valid_body(kind, stream=True),
                headers={"x-mock-reply-tokens": "24", "x-mock-chunks": "6"},
            )
            assert response.status_code == 200
            streams[kind] = response.content
    return streams


def events_of(data: bytes, *cuts: int) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(event.raw for event in decoder.feed(data[start:cut]))
        start = cut
    out.extend(event.raw for event in decoder.flush())
    return out


def tally_of(kind: str, data: bytes, *cuts: int) -> Any:
    info = CallInfo(kind=kind, stream=True, wants_stream_usage=True)
    tally = ADAPTERS[ADAPTER_OF[kind]].stream_tally(info)
    decoder = SSEDecoder()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        for event in decoder.feed(data[start:cut]):
            tally.feed(event)
        start = cut
    for event in decoder.flush():
        tally.feed(event)
    return tally


# -- the SSE decoder and the stream tallies, byte by byte -----------------------------------------


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("kind", list(PATHS))
def test_a_stream_split_at_every_byte_boundary_reads_the_same(
    real_streams: dict[str, bytes], kind: str, newline: bytes
) -> None:
    data = real_streams[kind].replace(b"\n", newline)
    whole = events_of(data)
    assert len(whole) >= 8 and b"".join(whole) == data
    reference = tally_of(kind, data)
    assert reference.final and reference.usage is not None and reference.usage.output_tokens > 0
    for cut in range(1, len(data)):
        assert events_of(data, cut) == whole, cut
        tally = tally_of(kind, data, cut)
        assert (tally.final, tally.usage, tally.output()) == (
            reference.final,
            reference.usage,
            reference.output(),
        ), cut


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_the_decoder_loses_no_byte_however_the_stream_is_cut(data: bytes, cuts: list[int]) -> None:
    split = events_of(data, *(c for c in cuts if c <= len(data)))
    assert split == events_of(data)
    joined = b"".join(split)
    # Every byte comes out in an event, but for blank space after the stream's last event.
    assert data.startswith(joined) and not data[len(joined) :].strip()


SSE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=24,
)
KEYS = st.sampled_from(
    [
        "type",
        "choices",
        "delta",
        "content",
        "tool_calls",
        "index",
        "function",
        "usage",
        "response",
        "message",
        "item",
        "output_index",
        "error",
        "text",
        "partial_json",
        "content_block",
        "prompt_tokens",
        "input_tokens",
        "output_tokens",
    ]
)
# Objects made of the keys the tallies look for, with values of any type.
SHAPED = st.recursive(
    JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=5) | st.lists(inner, max_size=3)
)
EVENT_NAMES = st.sampled_from(
    [
        None,
        "message_start",
        "message_delta",
        "content_block_start",
        "content_block_delta",
        "response.completed",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "error",
        "ping",
    ]
)


class _Sink:
    async def write(self, data: bytes) -> None:  # never reached by these tests
        raise AssertionError


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["chat", "responses", "messages", "other"]),
    payloads=st.lists(st.tuples(EVENT_NAMES, SHAPED | JSON), min_size=1, max_size=6),
)
def test_the_relay_passes_on_any_event_the_tally_cannot_read(
    kind: str, payloads: list[tuple[str | None, Any]]
) -> None:
    adapter = ADAPTERS["anthropic" if kind == "messages" else "openai"]
    info = CallInfo(kind=kind, stream=True, wants_stream_usage=True)
    relay = StreamRelay(_Sink(), None, adapter.stream_tally(info), None, None)  # type: ignore[arg-type]
    raw = b"".join(
        (f"event: {name}\n".encode() if name else b"")
        + b"data: "
        + json.dumps(payload).encode()
        + b"\n\n"
        for name, payload in payloads
    )
    relayed = relay._accept(SSEDecoder().feed(raw))
    assert b"".join(relayed) == raw  # every event reaches the client as the provider sent it
    usage = relay.tally.billed_usage(100)
    assert usage.input_tokens >= 0 and usage.output_tokens >= 0


# -- the request parsers --------------------------------------------------------------------------

ANY = JSON | st.text(max_size=30)
CONTENT_PART = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "text",
                "image_url",
                "input_text",
                "image",
                "tool_use",
                "tool_result",
                "document",
                "input_image",
            ]
        )
        | ANY
    },
    optional={"text": ANY, "content": ANY, "input": ANY, "name": ANY, "image_url": ANY},
)
CONTENT = st.text(max_size=40) | st.lists(CONTENT_PART | ANY, max_size=3) | ANY
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | ANY},
    optional={
        "content": CONTENT,
        "tool_calls": ANY
        | st.lists(
            st.fixed_dictionaries(
                {"function": ANY | st.fixed_dictionaries({"name": ANY, "arguments": ANY})}
            ),
            max_size=2,
        ),
        "name": ANY,
    },
)
MESSAGES = st.lists(MESSAGE | ANY, max_size=4) | ANY
CAP = st.integers(-5, 10**30) | ANY


def shaped_body(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    common = {"model": st.sampled_from(["gpt-4o-mini", "claude-sonnet-4-6", "llama"]) | ANY}
    if kind == "chat":
        return st.fixed_dictionaries(
            {**common, "messages": MESSAGES},
            optional={
                "max_tokens": CAP,
                "max_completion_tokens": CAP,
                "n": CAP,
                "stream": st.booleans() | ANY,
                "stream_options": ANY,
                "tools": ANY,
                "functions": ANY,
                "response_format": ANY,
            },
        )
    if kind == "responses":
        return st.fixed_dictionaries(
            {**common, "input": st.text(max_size=30) | st.lists(MESSAGE | ANY, max_size=3) | ANY},
            optional={
                "instructions": ANY,
                "max_output_tokens": CAP,
                "stream": st.booleans() | ANY,
                "tools": ANY,
                "text": ANY,
            },
        )
    return st.fixed_dictionaries(
        {**common, "messages": MESSAGES, "max_tokens": CAP},
        optional={"system": CONTENT, "tools": ANY, "stream": st.booleans() | ANY},
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(list(PATHS)))
def test_the_request_parsers_read_any_shape_or_say_they_cannot(data: Any, kind: str) -> None:
    body = data.draw(shaped_body(kind))
    adapter = ADAPTERS[ADAPTER_OF[kind]]
    try:
        info = adapter.parse_request(PATHS[kind], body)
    except SHAPE_ERRORS:
        return  # the forwarder answers these with a 400 in the provider's format
    assert info.kind == kind
    assert info.cap is None or (isinstance(info.cap, int) and info.cap > 0)
    assert isinstance(info.choices, int) and info.choices >= 1
    assert all(isinstance(text, str) for text in info.prompt.texts)
    assert estimate_prompt(info.prompt, adapter.tokenizer_family(info.model)) >= 0
    if adapter.enforce(body, info, 10, info.cap_field or "max_completion_tokens"):
        json.dumps(body)


# -- hostile agents, through the proxy ------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(mock_thread: MockProviderThread) -> Iterator[ProxyThread]:
    running = ProxyThread(proxy_config(mock_thread.base_url, server={"max_body_bytes": 256 * 1024}))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=30) as http:
        yield http


def check_answer(kind: str, response: httpx2.Response, proxy: ProxyThread, task: str) -> None:
    """Tripwire's own answers are errors in the provider's format; what the provider answered
    passes through; either way nothing stays reserved."""
    if "x-tripwire-calls" not in response.headers:  # answered by Tripwire itself
        assert response.status_code in (400, 403, 404, 408, 413, 429), response.text
        body = response.json()
        if kind == "messages":
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        else:
            assert set(body) == {"error"} and body["error"]["message"]
    view = proxy.task(task)
    assert view is None or view.tokens_reserved == 0


def post(client: httpx2.Client, proxy: ProxyThread, kind: str, body: bytes, task: str) -> Any:
    return client.post(
        proxy.base_url + PATHS[kind],
        content=body,
        headers={"Content-Type": "application/json", "X-Task-Id": task, "x-api-key": "sk-h"},
    )


def hostile_bytes(kind: str) -> st.SearchStrategy[bytes]:
    valid = json.dumps(valid_body(kind)).encode()
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    spliced = st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=8)).map(
        lambda p: valid[: p[0]] + p[1] + valid[p[0] :]
    )
    shaped = shaped_body(kind).map(lambda body: json.dumps(body).encode())
    return truncated | spliced | shaped | st.binary(max_size=64)


@pytest.mark.parametrize("kind", list(PATHS))
def test_hostile_bodies_never_crash_the_proxy(
    proxy: ProxyThread, client: httpx2.Client, log_lines: LogLines, kind: str
) -> None:
    @FAST
    @given(body=hostile_bytes(kind))
    def check(body: bytes) -> None:
        task = "hostile-" + uuid.uuid4().hex[:10]
        check_answer(kind, post(client, proxy, kind, body, task), proxy, task)

    check()
    assert not log_lines.events("internal_error")


@pytest.mark.parametrize("kind", list(PATHS))
def test_named_hostile_bodies(
    proxy: ProxyThread, client: httpx2.Client, log_lines: LogLines, kind: str
) -> None:
    valid = json.dumps(valid_body(kind)).encode()
    deep_json = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_python = valid.replace(b'"Hello there"', _nested(490), 1)
    cases = {
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "not utf-8": valid.replace(b"Hello", b"\xff\xfe\xfd"),
        "utf-16": json.dumps(valid_body(kind)).encode("utf-16"),
        "deeply nested": deep_json,
        "nested to the recursion limit": deep_python,
        "a list": b"[1, 2, 3]",
        "a string": b'"hello"',
        "null": b"null",
        "huge number": valid.replace(b"{", b'{"max_tokens": 1' + b"0" * 5000 + b", ", 1),
        "NaN": valid.replace(b"{", b'{"max_tokens": NaN, ', 1),
        "messages a number": valid.replace(b'"messages": [', b'"messages": 5, "x": [', 1),
        "oversized": b'{"model": "m", "input": "' + b"x" * 300_000 + b'"}',
    }
    for name, body in cases.items():
        task = "named-" + uuid.uuid4().hex[:10]
        response = post(client, proxy, kind, body, task)
        check_answer(kind, response, proxy, task)
        if name in ("empty", "truncated", "not utf-8", "deeply nested"):
            assert response.status_code == 400, (name, response.text)
            assert "not valid JSON" in response.text or name == "empty"
        if name == "oversized":
            assert response.status_code == 413
    assert not log_lines.events("internal_error")


def _nested(depth: int) -> bytes:
    """Tool results inside tool results: JSON nested about as deep as a parser allows."""
    return b'[{"type": "tool_result", "content": ' * depth + b'"deep"' + b"}]" * depth


def test_duplicated_keys_are_read_as_the_provider_reads_them(
    make_proxy: Any, mock: MockProviderThread, task: str
) -> None:
    """JSON with a key twice: Tripwire reads the last one, as the provider does, and when it
    lowers the cap the provider gets one key, the lowered one."""
    proxy = make_proxy(policy={"rules": [{"match": {"task": task}, "limits": {"max_tokens": 300}}]})
    body = (
        b'{"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": '
        b'"x"}], "messages": [{"role": "user", "content": "the real prompt"}], '
        b'"max_tokens": 100000}'
    )
    with httpx2.Client() as http:
        response = http.post(
            proxy.openai_url + "/chat/completions",
            content=body,
            headers={"X-Task-Id": task, "x-mock-reply-tokens": "5000"},
        )
    assert response.status_code == 200
    sent = mock.provider.last_request
    assert sent is not None
    assert sent.body["messages"][0]["content"] == "the real prompt"
    assert 0 < sent.body["max_tokens"] < 300
    assert response.json()["usage"]["total_tokens"] <= 300
    view = proxy.task(task)
    assert view is not None and view.tokens_used == response.json()["usage"]["total_tokens"]


# -- hostile providers, through the proxy ---------------------------------------------------------


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def scripted_proxy(scripted: ScriptedUpstream) -> Iterator[ProxyThread]:
    running = ProxyThread(proxy_config(scripted.base_url))
    yield running
    running.stop()


def stream_call(client: httpx2.Client, proxy: ProxyThread, kind: str, task: str) -> httpx2.Response:
    return client.post(
        proxy.base_url + PATHS[kind],
        json=valid_body(kind, stream=True),
        headers={"X-Task-Id": task, "x-api-key": "sk-h"},
    )


def settled_view(proxy: ProxyThread, task: str) -> Any:
    from tests.contract.sdk import eventually

    view = eventually(lambda: (v := proxy.task(task)) and v.tokens_reserved == 0 and v)
    assert view, proxy.task(task)
    return view


@pytest.mark.parametrize("kind", list(PATHS))
def test_a_stream_cut_into_any_chunks_reaches_the_client_whole_and_is_accounted(
    scripted: ScriptedUpstream,
    scripted_proxy: ProxyThread,
    client: httpx2.Client,
    real_streams: dict[str, bytes],
    kind: str,
) -> None:
    data = real_streams[kind]
    reported = tally_of(kind, data).usage.total

    @settings(max_examples=15, deadline=None)
    @given(cuts=st.lists(st.integers(1, len(data) - 1), min_size=1, max_size=6, unique=True))
    def check(cuts: list[int]) -> None:
        bounds = [0, *sorted(cuts), len(data)]
        chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
        scripted.push(Scripted(chunks, content_type="text/event-stream", pause=0.002))
        task = "split-" + uuid.uuid4().hex[:10]
        response = stream_call(client, scripted_proxy, kind, task)
        assert response.status_code == 200
        assert response.content == data
        assert settled_view(scripted_proxy, task).tokens_used == reported

    check()


@pytest.mark.parametrize("kind", list(PATHS))
def test_a_stream_dropped_at_any_byte_is_accounted_for_what_reached_the_client(
    scripted: ScriptedUpstream,
    scripted_proxy: ProxyThread,
    client: httpx2.Client,
    real_streams: dict[str, bytes],
    kind: str,
) -> None:
    data = real_streams[kind]

    @settings(max_examples=15, deadline=None)
    @given(at=st.integers(1, len(data) - 1))
    def check(at: int) -> None:
        scripted.push(Scripted([data[:at]], content_type="text/event-stream", cut=True))
        task = "drop-" + uuid.uuid4().hex[:10]
        try:
            received = stream_call(client, scripted_proxy, kind, task).content
        except httpx2.HTTPError:
            received = b""  # the proxy's own end of the stream can be lost with the connection
        seen = tally_of(kind, received)
        view = settled_view(scripted_proxy, task)
        text = seen.output().text
        assert view.tokens_used >= count_text(text)
        if received:
            assert data.startswith(b"".join(events_of(received)[:-1]))  # the provider's bytes
            assert b"broke off" in received.rsplit(b"\n\n", 2)[-2]  # then Tripwire's error event

    check()


HOSTILE_BODIES = {
    "choices a number": {"choices": 5, "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    "message a list": {"choices": [{"message": []}], "usage": {"prompt_tokens": 7}},
    "content a dict": {"content": {"type": "text"}, "usage": {"input_tokens": 7}},
    "usage a string": {"choices": [], "usage": "lots"},
    "tokens as strings": {"usage": {"prompt_tokens": "7", "completion_tokens": [3]}},
    "output a string": {"output": "text", "usage": {"input_tokens": 2, "output_tokens": 5}},
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
@pytest.mark.parametrize("kind", list(PATHS))
def test_a_hostile_provider_body_is_relayed_and_accounted(
    scripted: ScriptedUpstream,
    scripted_proxy: ProxyThread,
    client: httpx2.Client,
    log_lines: LogLines,
    kind: str,
    name: str,
) -> None:
    body = json.dumps(HOSTILE_BODIES[name]).encode()
    scripted.push(Scripted([body]))
    task = "hostile-body-" + uuid.uuid4().hex[:10]
    response = client.post(
        scripted_proxy.base_url + PATHS[kind], json=valid_body(kind), headers={"X-Task-Id": task}
    )
    assert response.status_code == 200 and response.content == body
    view = settled_view(scripted_proxy, task)
    assert view.tokens_used > 0  # the usage it reported, or at least the prompt it was sent
    assert not log_lines.events("internal_error")


HOSTILE_EVENTS = [
    b'data: {"choices": [{"delta": {"tool_calls": [{"index": "x", "function": 5}]}}]}\n\n',
    b'data: {"choices": 7}\n\n',
    b'event: content_block_start\ndata: {"type": "content_block_start", "index": "one",'
    b' "content_block": {"type": "tool_use", "name": 5}}\n\n',
    b'event: response.output_item.added\ndata: {"type": "response.output_item.added",'
    b' "output_index": [], "item": {"type": "function_call"}}\n\n',
    b"data: \xff\xfe not utf-8 \xc3\x28\n\n",
    b'data: {"choices": [{"delta": {"content": "' + b"x" * 1_000_000 + b'"}}]}\n\n',
]


@pytest.mark.parametrize("kind", list(PATHS))
def test_hostile_stream_events_are_relayed_and_the_usage_still_counts(
    scripted: ScriptedUpstream,
    scripted_proxy: ProxyThread,
    client: httpx2.Client,
    real_streams: dict[str, bytes],
    log_lines: LogLines,
    kind: str,
) -> None:
    data = real_streams[kind]
    first = data.index(b"\n\n") + 2
    hostile = data[:first] + b"".join(HOSTILE_EVENTS) + data[first:]
    scripted.push(Scripted([hostile], content_type="text/event-stream"))
    task = "hostile-events-" + uuid.uuid4().hex[:10]
    response = stream_call(client, scripted_proxy, kind, task)
    assert response.status_code == 200 and response.content == hostile
    assert settled_view(scripted_proxy, task).tokens_used == tally_of(kind, data).usage.total
    assert not log_lines.events("internal_error")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", list(PATHS))
def test_a_usage_block_of_nulls_is_no_free_call(
    scripted: ScriptedUpstream,
    scripted_proxy: ProxyThread,
    mock_thread: MockProviderThread,
    client: httpx2.Client,
    real_streams: dict[str, bytes],
    kind: str,
    stream: bool,
) -> None:
    """Some OpenAI-compatible servers send ``"prompt_tokens": null``: the call still costs at
    least its prompt and what was seen of its output, not nothing."""
    if stream:
        data = real_streams[kind]
    else:
        data = client.post(mock_thread.base_url + PATHS[kind], json=valid_body(kind)).content
    nulled = re.sub(
        rb"(\"(?:prompt|completion|input|output|total)_tokens\"): ?\d+", rb"\1: null", data
    )
    assert nulled != data
    scripted.push(
        Scripted([nulled], content_type="text/event-stream" if stream else "application/json")
    )
    task = "nulls-" + uuid.uuid4().hex[:10]
    response = client.post(
        scripted_proxy.base_url + PATHS[kind],
        json=valid_body(kind, stream=stream),
        headers={"X-Task-Id": task},
    )
    assert response.content == nulled
    view = settled_view(scripted_proxy, task)
    assert view.tokens_used >= 10
    if stream:
        assert view.tokens_used >= 10 + count_text(tally_of(kind, data).output().text)


# -- bounds on what reaches a lookup, a label, a log line or a key ------------------------------


class Pinger:
    """``/healthz`` asked every 10 ms from another thread: the longest answer is how long the
    event loop was blocked."""

    def __init__(self, proxy: ProxyThread) -> None:
        self.url = proxy.base_url + "/healthz"
        self.longest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with httpx2.Client(timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                http.get(self.url)
                self.longest = max(self.longest, time.monotonic() - started)
                time.sleep(0.01)

    def __enter__(self) -> Pinger:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def scrape(http: httpx2.Client, proxy: ProxyThread) -> bytes:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    return http.get(proxy.base_url + "/metrics", headers=accept).content


@pytest.mark.parametrize("kind", list(PATHS))
def test_a_huge_model_name_neither_stalls_the_loop_nor_bloats_metrics(
    make_proxy: Any, log_lines: LogLines, kind: str
) -> None:
    """The reported attack: a 2 MB model name blocked the loop 3.8 s in the price lookup and
    added about 40 times its size to every later scrape."""
    proxy = make_proxy()  # the default body limit, 32 MB: the name fits in a body
    with httpx2.Client(timeout=60) as http:
        warm = http.post(proxy.base_url + PATHS[kind], json=valid_body(kind))
        assert warm.status_code == 200
        before = len(scrape(http, proxy))
        body = valid_body(kind)
        body["model"] = "m" * 2_000_000
        with Pinger(proxy) as pinger:
            for _ in range(2):
                refused = http.post(
                    proxy.base_url + PATHS[kind], json=body, headers={"X-Task-Id": "huge-model"}
                )
                assert refused.status_code == 400
                check_answer(kind, refused, proxy, "huge-model")
                assert "model name is 2000000 characters long" in refused.text
                assert len(refused.content) < 2000
        assert pinger.longest < 0.5
        assert len(scrape(http, proxy)) - before < 4000
    assert all(
        len(record.getMessage()) + len(str(getattr(record, "fields", ""))) < 4000
        for record in log_lines.records
    )


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("too long", "m" * 257),
        ("a space", "gpt 4o"),
        ("a newline", "gpt-4o\nmini"),
        ("not ASCII", "gpt-4o-mini\u202e"),
        ("a control character", "gpt\x00"),
    ],
)
def test_model_names_are_bounded(
    proxy: ProxyThread, client: httpx2.Client, name: str, model: str
) -> None:
    for kind in PATHS:
        body = valid_body(kind)
        body["model"] = model
        task = "model-" + uuid.uuid4().hex[:10]
        response = post(client, proxy, kind, json.dumps(body).encode(), task)
        assert response.status_code == 400, (name, response.text)
        check_answer(kind, response, proxy, task)
        assert "model name" in response.text
    # Real names of every shape pass.
    for model in ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1:8b", "claude@20240620"):
        body = valid_body("chat")
        body["model"] = model
        task = "real-" + uuid.uuid4().hex[:10]
        assert post(client, proxy, "chat", json.dumps(body).encode(), task).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Task-Id": "t" * 129},
        {"X-Task-Id": "\u00e9".encode().decode("latin-1") * 40},
        {"X-Agent-Id": "{" * 43},
        {"x-litellm-session-id": "x" * 8000},
        {"Helicone-Session-Id": "%" * 50},
    ],
    ids=["long task", "escaped past the bound", "agent of braces", "peer header", "percents"],
)
def test_ids_past_their_bound_are_a_400_in_the_providers_format(
    proxy: ProxyThread, client: httpx2.Client, headers: dict[str, str]
) -> None:
    for kind, path in PATHS.items():
        response = client.post(
            proxy.base_url + path,
            json=valid_body(kind),
            headers={k: v.encode("latin-1") for k, v in headers.items()},  # type: ignore[misc]
        )
        assert response.status_code == 400, response.text
        check_answer(kind, response, proxy, "t" * 129)
        assert "at most 128" in response.text
        assert len(response.content) < 2000


@given(value=st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_id_becomes_canonical_or_is_refused(value: str) -> None:
    from urllib.parse import unquote

    from proxy.errors import BadRequest
    from proxy.ids import ID_PATTERN, canonical_id

    try:
        canonical = canonical_id(value)
    except BadRequest:
        return
    assert re.match(ID_PATTERN, canonical) and "/" not in canonical
    # One-to-one: the escapes undo to what was sent, so two ids never share a task.
    assert unquote(canonical) == value.strip()
    if "%" not in canonical:
        assert canonical_id(canonical) == canonical


def test_a_long_unknown_path_is_not_echoed_whole(proxy: ProxyThread, client: httpx2.Client) -> None:
    for path in ("/u/" + "x" * 8000 + "/v1/chat/completions", "/" + "y" * 8000):
        response = client.post(proxy.base_url + path, json=valid_body("chat"))
        assert response.status_code == 404
        assert len(response.content) < 600 and "x" * 200 not in response.text


def test_an_id_that_is_not_utf8_is_escaped_not_a_crash(
    proxy: ProxyThread, client: httpx2.Client
) -> None:
    for kind, path in PATHS.items():
        response = client.post(
            proxy.base_url + path,
            json=valid_body(kind, text=uuid.uuid4().hex),
            headers={"X-Task-Id": b"job-\xff\xfe", "X-Agent-Id": b"\xc3("},  # type: ignore[dict-item]
        )
        assert response.status_code == 200, response.text
        task = response.headers["x-tripwire-task"]
        assert task.startswith("job-%") and re.match(r"^[A-Za-z0-9._~:@+=%-]+$", task)
