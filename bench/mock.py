"""A lean mock provider for the benchmark: OpenAI Chat Completions and Anthropic Messages, JSON
and SSE, on a bare asyncio protocol.

`proxy.mock_provider` records every request and tokenizes every prompt, which is right for the
tests and wrong for a load test (its memory grows with each call and it would cap what any
proxy in front of it can show). This one parses just enough HTTP/1.1 to serve keep-alive
clients, and answers with what a proxy has to read: the body shape, the SSE framing and the
usage blocks.

Per request, like the built-in mock: `x-mock-delay` (seconds before the answer),
`x-mock-chunks` (content deltas of a stream), `x-mock-chunk-delay` (seconds between deltas),
`x-mock-reply-tokens` (completion length, lowered to the request's cap). Command-line flags set
the defaults. Every content delta of a stream carries `x_sent`, the CLOCK_MONOTONIC time it was
written, so a client on the same machine can measure what each hop adds per chunk.

`GET /_bench/stats` returns the requests served and the tokens billed (prompt tokens when an
answer starts, completion tokens as they are written, as a provider bills a cut stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from proxy.mock_provider import count_tokens
from proxy.mock_provider.common import encoding

STATS_PATH = "/_bench/stats"
_CACHE_MIN_CHARS = 64
_CACHE_SIZE = 4096
_counts: dict[str, int] = {}
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_WORD = re.compile(r" [a-z]{4,9}")


@dataclass(slots=True)
class Defaults:
    delay: float = 0.0
    chunks: int = 16
    chunk_delay: float = 0.0
    reply_tokens: int = 64


@dataclass(slots=True)
class Stats:
    requests: int = 0
    streams: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "streams": self.streams,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class BadRequest(Exception):
    pass


def _count(text: str) -> int:
    if len(text) < _CACHE_MIN_CHARS:
        return count_tokens(text)
    count = _counts.get(text)
    if count is None:
        if len(_counts) >= _CACHE_SIZE:
            _counts.clear()
        count = _counts[text] = count_tokens(text)
    return count


def _prompt_tokens(body: dict[str, Any]) -> int:
    """cl100k tokens plus OpenAI's framing, as the built-in mock counts them: a proxy's
    estimate is checked against what a provider would bill. Repeated texts (the system
    prompt) are counted once, so the mock stays cheap next to what it serves."""
    messages = body.get("messages")
    total = 3
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        total += 4
        if isinstance(content, str):
            total += _count(content)
        elif isinstance(content, list):
            total += sum(_count(p.get("text", "")) for p in content if isinstance(p, dict))
    system = body.get("system")
    if isinstance(system, str):
        total += _count(system)
    return total


def _cap(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


_TEXT_WORDS = 1 << 18
_text: list[str] = []


def _load_text() -> None:
    """A long fixed sequence of words that cl100k encodes as one token each, wherever they
    stand: a reply of N words is N tokens, and replies cut from different places share
    (almost) no word 3-shingles, so a task of hundreds of calls trips no content detector
    (cycle, near-duplicate, no progress) of a proxy, as real varied answers would not."""
    if _text:
        return
    codec = encoding()
    words = []
    for token in range(256, 40_000):
        word = codec.decode([token])
        if _WORD.fullmatch(word) and len(codec.encode_ordinary(word * 3)) == 3:
            words.append(word)
    _text.extend(random.Random(7).choices(words, k=_TEXT_WORDS))


def _parts(serial: int, tokens: int, chunks: int) -> list[tuple[str, int]]:
    """The reply as `chunks` (delta, tokens) of about equal token counts; distinct per
    serial number, so the loop detectors of a proxy see no repeated output."""
    _load_text()
    chunks = max(1, min(chunks, tokens)) if tokens else 1
    base, extra = divmod(tokens, chunks)
    start = (serial * 7919) % max(1, _TEXT_WORDS - tokens)
    parts = []
    for index in range(chunks):
        count = base + (1 if index < extra else 0)
        prefix = f"Reply {serial}:" if index == 0 else ""
        parts.append((prefix + "".join(_text[start : start + count]), count))
        start += count
    return parts


class Mock:
    def __init__(self, defaults: Defaults) -> None:
        self.defaults = defaults
        self.stats = Stats()
        self.serial = 0

    def settings(self, headers: dict[str, str]) -> Defaults:
        d = self.defaults
        try:
            return Defaults(
                delay=float(headers.get("x-mock-delay", d.delay)),
                chunks=int(headers.get("x-mock-chunks", d.chunks)),
                chunk_delay=float(headers.get("x-mock-chunk-delay", d.chunk_delay)),
                reply_tokens=int(headers.get("x-mock-reply-tokens", d.reply_tokens)),
            )
        except ValueError as exc:
            raise BadRequest(f"bad x-mock header: {exc}") from None


def _response_head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
    if length is None:
        lines += ["Transfer-Encoding: chunked", "Cache-Control: no-cache"]
    else:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _sse(payload: Any, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class Protocol(asyncio.Protocol):
    """One client connection; requests are served in order (pipelining is not needed by any
    client here, but a second request in the buffer waits for the first answer)."""

    def __init__(self, mock: Mock) -> None:
        self.mock = mock
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self.busy and not self.closed:
            try:
                request = self._take_request()
            except BadRequest as exc:
                self._write_error(400, str(exc), keep_alive=False)
                return
            if request is None:
                return
            self._dispatch(request)

    def _take_request(self) -> Request | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise BadRequest("request head too large")
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise BadRequest("bad request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(self.buffer, start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY_BYTES:
                raise BadRequest("body too large")
            if len(self.buffer) < start + length:
                return None
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    def _dispatch(self, request: Request) -> None:
        mock = self.mock
        if request.path == STATS_PATH:
            self._write_json(200, mock.stats.as_dict(), request.keep_alive)
            return
        kind = _kind(request.path)
        if request.method != "POST" or kind is None:
            self._write_error(404, f"no route {request.method} {request.path}", request.keep_alive)
            return
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            settings = mock.settings(request.headers)
        except (ValueError, BadRequest) as exc:
            self._write_error(400, str(exc), request.keep_alive)
            return
        mock.stats.requests += 1
        mock.serial += 1
        if body.get("stream") is True or settings.delay > 0:
            self.busy = True
            self.task = asyncio.ensure_future(
                self._answer_later(kind, body, settings, mock.serial, request.keep_alive)
            )
            self.task.add_done_callback(self._after_task)
            return
        answer = self._json_answer(kind, body, settings, mock.serial)
        self._write_json(200, answer, request.keep_alive)

    def _after_task(self, task: asyncio.Task[None]) -> None:
        self.task = None
        self.busy = False
        if not task.cancelled() and task.exception() is not None and self.transport is not None:
            self.transport.close()
            return
        if self.buffer:
            self._serve_buffered()

    async def _answer_later(
        self, kind: str, body: dict[str, Any], settings: Defaults, serial: int, keep_alive: bool
    ) -> None:
        if settings.delay > 0:
            await asyncio.sleep(settings.delay)
        if body.get("stream") is True:
            await self._stream(kind, body, settings, serial, keep_alive)
        elif not self.closed:
            self._write_json(200, self._json_answer(kind, body, settings, serial), keep_alive)

    def _json_answer(
        self, kind: str, body: dict[str, Any], settings: Defaults, serial: int
    ) -> dict[str, Any]:
        prompt = _prompt_tokens(body)
        tokens = _completion_tokens(body, settings)
        text = "".join(part for part, _ in _parts(serial, tokens, 1))
        self.mock.stats.prompt_tokens += prompt
        self.mock.stats.completion_tokens += tokens
        model = str(body.get("model", ""))
        if kind == "messages":
            return {
                "id": f"msg_bench{serial}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": tokens},
            }
        return {
            "id": f"chatcmpl-bench{serial}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": tokens,
                "total_tokens": prompt + tokens,
            },
        }

    async def _stream(
        self, kind: str, body: dict[str, Any], settings: Defaults, serial: int, keep_alive: bool
    ) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        stats = self.mock.stats
        stats.streams += 1
        prompt = _prompt_tokens(body)
        tokens = _completion_tokens(body, settings)
        parts = _parts(serial, tokens, settings.chunks)
        model = str(body.get("model", ""))
        events = (
            _ChatEvents(model, serial, body) if kind == "chat" else _MessageEvents(model, serial)
        )
        stats.prompt_tokens += prompt
        transport.write(
            _response_head(200, "text/event-stream; charset=utf-8", None, keep_alive)
            + _chunk(events.opening(prompt))
        )
        for index, (part, count) in enumerate(parts):
            if index and settings.chunk_delay > 0:
                await asyncio.sleep(settings.chunk_delay)
            if self.closed:
                return
            transport.write(_chunk(events.delta(part, time.monotonic())))
            stats.completion_tokens += count
            if transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)
        transport.write(_chunk(events.closing(prompt, tokens)) + b"0\r\n\r\n")
        if not keep_alive:
            transport.close()

    def _write_json(self, status: int, payload: Any, keep_alive: bool) -> None:
        if self.transport is None or self.closed:
            return
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.transport.write(
            _response_head(status, "application/json", len(data), keep_alive) + data
        )
        if not keep_alive:
            self.transport.close()

    def _write_error(self, status: int, message: str, keep_alive: bool) -> None:
        self._write_json(status, {"error": {"message": message, "type": "bench_mock"}}, keep_alive)


def _completion_tokens(body: dict[str, Any], settings: Defaults) -> int:
    cap = _cap(body)
    return settings.reply_tokens if cap is None else min(settings.reply_tokens, cap)


def _kind(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/messages"):
        return "messages"
    return None


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        data_start = line_end + 2
        if len(buffer) < data_start + size + 2:
            return None
        if size == 0:
            trailer_end = buffer.find(b"\r\n", data_start)
            return (bytes(body), trailer_end + 2) if trailer_end >= 0 else None
        body += buffer[data_start : data_start + size]
        position = data_start + size + 2


class _ChatEvents:
    def __init__(self, model: str, serial: int, body: dict[str, Any]) -> None:
        options = body.get("stream_options")
        self.usage = isinstance(options, dict) and options.get("include_usage") is True
        self.envelope = {
            "id": f"chatcmpl-bench{serial}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def _event(self, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        payload: dict[str, Any] = {
            **self.envelope,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        if self.usage:
            payload["usage"] = None
        return _sse(payload)

    def opening(self, prompt: int) -> bytes:
        return self._event({"role": "assistant", "content": ""}, None)

    def delta(self, text: str, sent: float) -> bytes:
        return self._event({"content": text}, None, x_sent=sent)

    def closing(self, prompt: int, tokens: int) -> bytes:
        out = self._event({}, "stop")
        if self.usage:
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": tokens,
                "total_tokens": prompt + tokens,
            }
            out += _sse({**self.envelope, "choices": [], "usage": usage})
        return out + _sse("[DONE]")


class _MessageEvents:
    def __init__(self, model: str, serial: int) -> None:
        self.model = model
        self.serial = serial

    def opening(self, prompt: int) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_bench{self.serial}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 1},
        }
        return (
            _sse({"type": "message_start", "message": message}, "message_start")
            + _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
            + _sse({"type": "ping"}, "ping")
        )

    def delta(self, text: str, sent: float) -> bytes:
        payload = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
            "x_sent": sent,
        }
        return _sse(payload, "content_block_delta")

    def closing(self, prompt: int, tokens: int) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": prompt, "output_tokens": tokens},
        }
        return (
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            + _sse(delta, "message_delta")
            + _sse({"type": "message_stop"}, "message_stop")
        )


async def serve(host: str, port: int, defaults: Defaults) -> None:
    loop = asyncio.get_running_loop()
    count_tokens("load the tokenizer before the port opens")
    _load_text()
    mock = Mock(defaults)
    server = await loop.create_server(lambda: Protocol(mock), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    # The harness reads this line to learn the port when it asked for port 0.
    print(json.dumps({"listening": f"http://{host}:{bound}", "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mock", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--chunks", type=int, default=16, help="content deltas per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--reply-tokens", type=int, default=64, help="completion length")
    args = parser.parse_args(argv)
    defaults = Defaults(args.delay, args.chunks, args.chunk_delay, args.reply_tokens)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, defaults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
