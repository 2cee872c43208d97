"""The hooks the core emits for every call, and the order addons run in.

An addon is any object with some of the methods below (and, optionally, a ``name``); it
subclasses nothing. ``Hooks`` collects each hook's bound methods once, at start-up, in the
order of the addon list in ``proxy/app.py``: an addon without a hook costs nothing on the hot
path, and dispatch is a loop over a tuple.

Two kinds of hook:

- **Answer hooks** may change what the caller gets: answer instead of the provider, refuse,
  rewrite the request body or the response headers, replace a completed answer. They run in
  the declared order, and an exception in one is the call's error, as any other.
- **Observer hooks** only look. They run after the answer is decided, each in isolation: an
  exception is logged and counted (``tripwire_addon_failures_total``), and neither breaks the
  call nor keeps the next addon from running.

A call's hooks, in the order they fire (the core's own steps in brackets)::

    request ─▶ [reserve, cap] ─▶ reserved ─▶ [send] ─▶
      JSON:   [read] ─▶ [settle] ─▶ settled ─▶ completed ─▶ response_headers ─▶ done
      stream: response_headers ─▶ holds_answer ─▶ stream_started ─▶ [relay] stream_event*
              ─▶ stream_ended ─▶ [settle] ─▶ settled ─▶ completed ─▶ [closing events] ─▶ done
    refused ─▶ done: when ``request`` or the reservation refuses the call
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from proxy.telemetry.logs import event

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDict

    from proxy.detectors.base import Trip
    from proxy.errors import TripwireError
    from proxy.pipeline.call import Call, Intervention, Settlement
    from proxy.providers.base import Output, StreamTally
    from proxy.server.sse import SSEEvent
    from proxy.session.base import Grant, TaskView


class Addon:
    """The hooks an addon may implement. Documentation only: addons do not subclass it, and
    ``Hooks`` skips whatever an addon leaves out. An addon holding something open (a trace
    exporter's queue) may also have ``async close()``, awaited when the server stops."""

    name: str = ""  # how failures are logged and counted; the class name when empty

    # -- answer hooks ---------------------------------------------------------------------

    async def request(self, call: Call) -> web.StreamResponse | None:
        """A call was parsed and tagged, its policy resolved; nothing is reserved yet. Return a
        response to answer instead of the provider (the call is then neither reserved nor
        forwarded), raise a ``TripwireError`` to refuse it, or add to ``call.prompt_tokens``
        what the addon will add to the request."""

    def reserved(self, call: Call, grant: Grant) -> bool:
        """The budget is reserved and the output cap set in ``call.body``. Rewrite the body
        here (it is only for calls of a modelled kind); return True when it changed."""
        return False

    def response_headers(
        self, call: Call, headers: CIMultiDict[str], view: TaskView, overhead_s: float
    ) -> None:
        """The headers the caller will get are being built: add or change some. ``view`` is
        the task after this call (a JSON answer) or when the stream started."""

    def holds_answer(self, call: Call) -> bool:
        """A stream is starting: True when its closing events must wait for ``completed``'s
        verdict rather than being relayed as they arrive."""
        return False

    def stream_started(self, call: Call, grant: Grant, cut: Callable[[Trip], None]) -> None:
        """The stream's headers are out and it is watched for kills; ``cut(trip)`` ends it with
        an error event at any moment."""

    def stream_event(self, call: Call, sse: SSEEvent, tally: StreamTally) -> None:
        """One event of the provider's stream, after the adapter's tally read it and before
        the client gets it: watch the stream as it flows (``tally`` holds the usage and output
        so far), and cut it with the handle ``stream_started`` gave."""

    async def completed(self, call: Call, output: Output) -> Intervention | None:
        """The answer is whole and settled. Return an ``Intervention`` to block it or refuse
        it; None delivers it. For a stream that no addon held, the answer has already reached
        the caller and the verdict only counts for the task's next calls."""
        return None

    # -- observer hooks -------------------------------------------------------------------

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        """The provider's stream is over (whole, cut with ``cut``, broken or left)."""

    def settled(self, call: Call, settlement: Settlement) -> None:
        """The ledger booked the call. Its trips follow on the trip bus."""

    def refused(self, call: Call, error: TripwireError) -> None:
        """The call was not forwarded: a limit, a kill, a busy budget or the state store."""

    def done(self, call: Call) -> None:
        """The call is over, whatever happened to it: release what ``request`` took."""


ANSWER_HOOKS = (
    "request",
    "reserved",
    "response_headers",
    "holds_answer",
    "stream_started",
    "stream_event",
    "completed",
)
OBSERVER_HOOKS = ("stream_ended", "settled", "refused", "done")

FailureCounter = Callable[[str, str], None]


def addon_name(addon: object) -> str:
    return getattr(addon, "name", "") or type(addon).__name__


def _bound(addons: Sequence[object], hook: str) -> tuple[Any, ...]:
    return tuple(getattr(a, hook) for a in addons if callable(getattr(a, hook, None)))


def _named(addons: Sequence[object], hook: str) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (addon_name(a), getattr(a, hook)) for a in addons if callable(getattr(a, hook, None))
    )


class Hooks:
    """Each hook's bound methods, collected once from the addon list."""

    def __init__(self, addons: Iterable[object], on_failure: FailureCounter | None = None) -> None:
        listed = tuple(addons)
        self.addons = listed
        self._on_failure = on_failure
        self.request = cast(
            "tuple[Callable[[Call], Awaitable[web.StreamResponse | None]], ...]",
            _bound(listed, "request"),
        )
        self.reserved = cast(
            "tuple[Callable[[Call, Grant], bool], ...]", _bound(listed, "reserved")
        )
        self.response_headers = cast(
            "tuple[Callable[[Call, CIMultiDict[str], TaskView, float], None], ...]",
            _bound(listed, "response_headers"),
        )
        self.holds_answer = cast(
            "tuple[Callable[[Call], bool], ...]", _bound(listed, "holds_answer")
        )
        self.stream_started = cast(
            "tuple[Callable[[Call, Grant, Callable[[Trip], None]], None], ...]",
            _bound(listed, "stream_started"),
        )
        self.stream_event = cast(
            "tuple[Callable[[Call, SSEEvent, StreamTally], None], ...]",
            _bound(listed, "stream_event"),
        )
        self.completed = cast(
            "tuple[Callable[[Call, Output], Awaitable[Intervention | None]], ...]",
            _bound(listed, "completed"),
        )
        self._stream_ended = _named(listed, "stream_ended")
        self._settled = _named(listed, "settled")
        self._refused = _named(listed, "refused")
        self._done = _named(listed, "done")

    def find(self, kind: type[Any]) -> Any:
        """The addon of this type, or None: for tests and the admin side, never the hot path."""
        return next((a for a in self.addons if isinstance(a, kind)), None)

    def holds(self, call: Call) -> bool:
        return any(hold(call) for hold in self.holds_answer) if self.holds_answer else False

    def watcher(self, call: Call, tally: StreamTally) -> Callable[[SSEEvent], None] | None:
        """What hands each stream event to every ``stream_event`` hook; None when no addon
        watches streams, so the relay's loop pays one check per event."""
        watchers = self.stream_event
        if not watchers:
            return None

        def watch(sse: SSEEvent) -> None:
            for hook in watchers:
                hook(call, sse, tally)

        return watch

    # Observers: each in isolation, so one faulty addon costs a log line, not the call.

    def stream_ended(self, call: Call, cut: Trip | None) -> None:
        for name, hook in self._stream_ended:
            try:
                hook(call, cut)
            except Exception as exc:
                self._failed(name, "stream_ended", exc)

    def settled(self, call: Call, settlement: Settlement) -> None:
        for name, hook in self._settled:
            try:
                hook(call, settlement)
            except Exception as exc:
                self._failed(name, "settled", exc)

    def refused(self, call: Call, error: TripwireError) -> None:
        for name, hook in self._refused:
            try:
                hook(call, error)
            except Exception as exc:
                self._failed(name, "refused", exc)

    def done(self, call: Call) -> None:
        for name, hook in self._done:
            try:
                hook(call)
            except Exception as exc:
                self._failed(name, "done", exc)

    def _failed(self, addon: str, hook: str, exc: Exception) -> None:
        event("addon_failed", logging.ERROR, addon=addon, hook=hook, error=repr(exc))
        if self._on_failure is not None:
            self._on_failure(addon, hook)
