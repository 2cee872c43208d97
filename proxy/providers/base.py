"""What every provider adapter offers the server: one small interface per wire format.

The adapter is the only place that knows a wire format: its request kinds and cap fields, the
prompt's text for the estimate, usage and output in answers and streams, where a provider key
goes, the error ``type`` of each problem, and the events Tripwire writes itself (refusals,
cuts, blocked answers, injected faults). Nothing else in Tripwire branches on a format.

An adapter reads copies of the traffic. It never does I/O, and it only changes a request body
when enforcement needs to (the output cap, or asking for stream usage).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy import jsonio
from proxy.detectors.normalise import canonical_arguments, exact_bytes
from proxy.errors import TokenizerUnavailable
from proxy.server.sse import SSEDecoder, SSEEvent
from proxy.tokens import PromptParts, count_bounded

# Output kept for fingerprinting is bounded so one huge completion cannot grow memory; what
# is not kept is still counted (``StreamTally``).
MAX_OUTPUT_CHARS = 256 * 1024


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# The problems Tripwire reports, by name; each adapter maps every one to its own error type.
# All but the last three are ``TripwireError.kind`` values, "blocked" is a worker's answer held
# back, and the last two are provider failures chaos injects.
ERROR_KINDS = (
    "not_found",
    "invalid_request",
    "unauthorized",
    "forbidden",
    "refused",
    "busy",
    "unavailable",
    "timeout",
    "upstream",
    "internal",
    "blocked",
    "rate_limited",
    "overloaded",
)


@dataclass(slots=True)
class Usage:
    """Provider-reported usage. ``input_tokens`` counts every prompt token, cached or not."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class CallInfo:
    """What the proxy needs to know about a request before forwarding it."""

    kind: str  # "chat", "responses", "messages" or "other"
    model: str = ""
    stream: bool = False
    cap: int | None = None  # the output cap the client asked for
    choices: int = 1  # OpenAI's ``n``: every choice may use the whole cap
    cap_field: str | None = None  # where an enforced cap goes; None: the kind has no cap
    # What the prompt estimate counts, read from the body only when a call needs its estimate
    # (``prompt``): walking a long conversation costs more than most calls need to spend.
    read_prompt: Callable[[], PromptParts] | None = field(default=None, repr=False)
    system_text: str | None = None
    wants_stream_usage: bool = True  # False: the client did not ask; usage is injected
    # How the answer's stream is framed, once known: "sse", or "json-array" (Gemini's
    # streamGenerateContent without alt=sse). Tripwire's own events follow it.
    framing: str = "sse"
    _prompt: PromptParts | None = field(default=None, repr=False)

    @property
    def prompt(self) -> PromptParts:
        """What the prompt estimate counts (``proxy.tokens.estimate_prompt``)."""
        if self._prompt is None:
            self._prompt = self.read_prompt() if self.read_prompt else PromptParts([], 0)
        return self._prompt

    @prompt.setter
    def prompt(self, parts: PromptParts) -> None:
        self._prompt = parts

    @property
    def modelled(self) -> bool:
        """A kind Tripwire reads (its prompt, cap and answer), not one it only passes on."""
        return self.kind != "other"


@dataclass(slots=True)
class Output:
    """The completion as fingerprinted by the detectors: text and tool calls; and, for
    traces, the model that answered and why it stopped (neither is fingerprinted)."""

    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments)
    model: str = ""  # the model the provider says answered
    finish_reasons: list[str] = field(default_factory=list)  # one per choice, as the wire says

    def fingerprint(self) -> str | None:
        """Same normalized text and tool calls -> same fingerprint; None for an empty output.
        Case, punctuation, spacing and markdown decoration do not count (``exact_bytes``)."""
        text = exact_bytes(self.text)
        if not text and not self.tool_calls:
            return None
        digest = hashlib.blake2b(text, digest_size=8)
        for name, arguments in self.tool_calls:
            digest.update(b"\x00" + name.encode() + b"\x00" + canonical_arguments(arguments))
        return digest.hexdigest()


class StreamTally:
    """Reads a response stream's events: usage, output, and which events the client sees.

    Subclasses implement ``feed``. ``final`` turns True once the provider's closing usage
    arrived; until then the output tokens are counted from the deltas seen.
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.final = False
        self.error: str | None = None  # an error event the provider sent
        self.model = ""  # the answering model, where an event names it
        self.finish_reasons: list[str] = []
        self._text: list[str] = []
        self._size = 0
        self._tools: dict[int, tuple[list[str], list[str]]] = {}  # index -> (name, arguments)
        # Output past what is kept for fingerprints, counted as its UTF-8 bytes: every token
        # covers at least one byte, so a stream that ends without usage is never booked short.
        self._unkept_bytes = 0
        # Output tokens counted so far, delta by delta (bounded in time per delta), for the
        # relay to compare with the call's reservation while the stream runs; counted only
        # when it does (``counting``), as a stream's usage is read from its end otherwise.
        self.counting = False
        self.counted = 0
        self.oversize = 0  # bytes of an event too large to read: billed as tokens

    def add_text(self, text: str) -> None:
        if self.counting:
            self.counted += count_bounded(text)
        if self._size < MAX_OUTPUT_CHARS:
            self._text.append(text)
            self._size += len(text)
        else:
            self._unkept_bytes += _utf8_len(text)

    def add_tool(self, index: int, name: str = "", arguments: str = "") -> None:
        if index not in self._tools:
            if len(self._tools) >= 128:
                self._unkept_bytes += _utf8_len(name) + _utf8_len(arguments)
                return
            self._tools[index] = ([], [])
        names, args = self._tools[index]
        if name:
            names.append(name)
        if arguments and self.counting:
            self.counted += count_bounded(arguments)
        if arguments and self._size < MAX_OUTPUT_CHARS:
            args.append(arguments)
            self._size += len(arguments)
        elif arguments:
            self._unkept_bytes += _utf8_len(arguments)

    def feed(self, event: SSEEvent) -> bool:
        """Account one event; return False when the client must not see it."""
        raise NotImplementedError

    def output(self) -> Output:
        tools = [("".join(n), "".join(a)) for n, a in self._tools.values()]
        return Output("".join(self._text), tools, self.model, list(self.finish_reasons))

    def billed_usage(self, prompt_estimate: int) -> Usage:
        """Usage to account when the stream ended: the provider's figures where it sent them,
        else the prompt estimate and the tokens counted in the deltas seen."""
        usage = self.usage or Usage(input_tokens=prompt_estimate)
        if not self.final:
            output = self.output()
            texts = [output.text, *(arguments for _, arguments in output.tool_calls)]
            try:
                seen = sum(count_bounded(text) for text in texts)
            except TokenizerUnavailable:  # a bound all the same: every token is a byte or more
                seen = sum(_utf8_len(text) for text in texts)
            seen += self._unkept_bytes + self.oversize
            usage.output_tokens = max(usage.output_tokens, seen)
        return usage


class StreamDecoder(Protocol):
    """Splits a response stream's bytes into events (sans-IO), and frames Tripwire's own
    events to fit the stream at the point where the client's copy stands."""

    # The largest event, in bytes: a bigger one raises ``EventTooLarge`` as soon as that many
    # of its bytes are in (or its size is declared), so no event is buffered past it.
    max_event: int | None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events these bytes complete; raises ``EventTooLarge`` past ``max_event``."""
        ...

    def flush(self) -> list[SSEEvent]: ...

    def frame(self, event: bytes, tail: bytes) -> bytes:
        """``event`` as written after ``tail``, the last bytes the client was sent."""
        ...


class Adapter(Protocol):
    """One wire protocol. ``openai`` covers every OpenAI-compatible host."""

    name: str

    @property
    def kinds(self) -> frozenset[str]:
        """The request kinds this format models (``CallInfo.kind``), unique across formats."""
        ...

    @property
    def default_base_url(self) -> str:
        """The provider's own address, for the upstream of this format's name by default."""
        ...

    @property
    def default_routes(self) -> tuple[str, ...]:
        """Path prefixes served by the upstream of this format's name when the client names no
        upstream (``/v1/messages`` for Anthropic)."""
        ...

    @property
    def price_provider(self) -> str:
        """The genai-prices provider id to look prices up under first."""
        ...

    @property
    def query_credentials(self) -> tuple[str, ...]:
        """Query parameters that carry a provider key (Gemini's ``key``): dropped from the
        forwarded URL when Tripwire puts its own key in place."""
        ...

    @property
    def error_types(self) -> Mapping[str, str]:
        """Every name of ``ERROR_KINDS`` -> this format's error type."""
        ...

    # -- requests -------------------------------------------------------------------------

    def parse_request(self, path: str, body: dict[str, Any]) -> CallInfo:
        """What the call is; ``path`` comes normalised (``proxy.server.routing.normal_path``)."""
        ...

    def costs_nothing(self, path: str) -> bool:
        """A path of a kind this format does not model that is never billed (counting tokens,
        cancelling, uploading files), so no budget needs to bound it."""
        ...

    def tokenizer_family(self, model: str) -> str:
        """The tokenizer to estimate a prompt with (``proxy.tokens.estimate_prompt``)."""
        ...

    def enforce(
        self, body: dict[str, Any], info: CallInfo, cap: int | None, cap_field: str | None
    ) -> bool:
        """Set the output cap and ask for stream usage if needed; True when the body changed."""
        ...

    def set_credential(self, headers: MutableMapping[str, str], api_key: str) -> None:
        """Put the upstream's key where this format carries it."""
        ...

    def output_format_open(self, body: dict[str, Any], info: CallInfo) -> bool:
        """Whether the request leaves its answer's format to the provider, so Tripwire may ask
        for a structured answer (a worker's status envelope) without taking anything away."""
        ...

    def ask_for_schema(
        self, body: dict[str, Any], info: CallInfo, name: str, schema: dict[str, Any], strict: bool
    ) -> None:
        """Ask for an answer that is a JSON object of ``schema``, named ``name``."""
        ...

    # -- answers --------------------------------------------------------------------------

    def usage_from_body(self, info: CallInfo, body: dict[str, Any]) -> Usage | None: ...

    def output_from_body(self, info: CallInfo, body: dict[str, Any]) -> Output: ...

    def stream_tally(self, info: CallInfo) -> StreamTally: ...

    def stream_decoder(
        self, info: CallInfo, status: int, content_type: str
    ) -> StreamDecoder | None:
        """The decoder of an answer that is a stream, or None for an answer read whole."""
        ...

    def closing_event(self, info: CallInfo) -> Callable[[SSEEvent], bool] | None:
        """Recognises a stream's first closing event, from which events may be held back until
        the answer is judged; None for a kind whose closing events are not known."""
        ...

    # -- Tripwire's own answers -----------------------------------------------------------

    def error_body(self, message: str, error_type: str, code: str) -> bytes: ...

    def error_event(self, message: str, error_type: str, code: str, info: CallInfo) -> bytes: ...

    def partial_stream(self, info: CallInfo, text: str) -> bytes:
        """A stream's first events up to some text: what a client has seen when a real stream
        breaks off mid-way."""
        ...

    def malformed_body(self, info: CallInfo) -> bytes:
        """An answer cut inside a string, which no JSON parser accepts."""
        ...

    def malformed_event(self, info: CallInfo) -> bytes:
        """A stream event cut inside its JSON."""
        ...


def sse_decoder(content_type: str) -> StreamDecoder | None:
    """An SSE decoder for an event-stream answer: the choice of the SSE formats."""
    return SSEDecoder() if content_type.startswith("text/event-stream") else None


def sse(payload: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + jsonio.dumps(payload) + b"\n\n"


def usage_from_generic(body: dict[str, Any]) -> Usage | None:
    """Usage from any body that carries one of the common shapes (OpenAI or Anthropic)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details") or {}
        return Usage(  # input, output, cached
            _int(usage.get("prompt_tokens")),
            _int(usage.get("completion_tokens")),
            _int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        )
    if "input_tokens" in usage or "output_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        cache_read = _int(usage.get("cache_read_input_tokens"))
        cache_write = _int(usage.get("cache_creation_input_tokens"))
        if isinstance(details, dict) and details.get("cached_tokens"):
            # Responses API: input_tokens already includes the cached ones.
            return Usage(
                input_tokens=_int(usage.get("input_tokens")),
                output_tokens=_int(usage.get("output_tokens")),
                cached_tokens=_int(details.get("cached_tokens")),
            )
        # Anthropic reports cache reads and writes beside input_tokens, not inside it.
        return Usage(
            input_tokens=_int(usage.get("input_tokens")) + cache_read + cache_write,
            output_tokens=_int(usage.get("output_tokens")),
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


# JSON from a provider's answer or event; None for what is no JSON.
load_json = jsonio.loads_or_none
