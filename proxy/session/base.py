"""The ledger's interface: reserve before forwarding, settle after, kill, get, list.

The protocol, written down once:

1. ``reserve(plan)`` checks the task atomically (killed? deadline, calls, hops, budgets) and,
   if the call may go, reserves its prompt estimate plus its output cap against every budget.
   It returns a ``Grant`` carrying the cap to enforce, or raises ``Refused``.
2. ``settle(grant, outcome)`` releases that reservation and books the provider-reported usage,
   then runs the completion detectors (repeated output, repeated request).
3. A trip with action ``kill`` marks the task killed; every stream of the task still in flight
   is cut through the ``KillBoard`` and every later call is refused. A task is kept from its
   first call that ``reserve`` lets through: a first call refused leaves no task behind (no
   kill, no timeline, no tenant index), so refused calls of fresh ids cost no state.

Nothing outside ``proxy.session`` knows which backend runs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.detectors.base import Trip
from proxy.policy.rules import Effective
from proxy.pricing import Price
from proxy.session.sessions import Span


@dataclass(slots=True)
class CallPlan:
    """Everything ``reserve`` needs to decide on one call."""

    task: str
    agent: str
    policy: Effective
    prompt_tokens: int  # the pre-flight estimate
    requested_output: int | None  # the client's own cap, per choice
    choices: int
    price: Price | None
    now: float
    tenant: str | None = None  # from a verified token; stored on the task's first call
    owner: str | None = None
    # False: the prompt was not estimated, as no token or dollar budget was known to apply;
    # ``reserve`` raises ``Unestimated`` if the task has one of its own.
    estimated: bool = True


@dataclass(frozen=True, slots=True)
class Preview:
    """A recent completion: its fingerprint and the first characters of its text."""

    agent: str
    fingerprint: str
    text: str


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    at: float
    kind: str  # created, trip, kill, resume, extend, charged (a call that never settled)
    detail: str


PREVIEWS_PER_TASK = 5
PREVIEW_CHARS = 160
TIMELINE_PER_TASK = 50
# Limits an operator or a task's creator may set on one task, over what the policy says.
OVERRIDABLE = (
    "max_tokens",
    "max_tokens_per_agent",
    "max_cost_usd",
    "max_calls",
    "max_hops",
    "max_duration",
)
# Limits that bound a call's cost: the ones the prompt's estimate is reserved against.
BUDGET_LIMITS = frozenset({"max_tokens", "max_tokens_per_agent", "max_cost_usd"})


@dataclass(slots=True)
class TaskView:
    """A task's figures as a client or operator sees them."""

    task: str
    started: float
    last_seen: float
    tokens_used: int
    tokens_reserved: int
    cost_usd: float
    calls: int
    hops: int
    agents: list[str]
    killed: Trip | None
    max_tokens: int | None = None
    tenant: str | None = None
    owner: str | None = None
    overrides: dict[str, float] = field(default_factory=dict)
    extra_duration: float = 0.0
    previews: list[Preview] = field(default_factory=list)
    timeline: list[TimelineEvent] = field(default_factory=list)
    # Workers' status envelopes by status (success, failed, partial, invalid).
    envelopes: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_left(self) -> int | None:
        if self.max_tokens is None:
            return None
        return max(self.max_tokens - self.tokens_used - self.tokens_reserved, 0)


@dataclass(slots=True)
class Grant:
    """A reservation: what was held back for one call, and the output cap to enforce."""

    task: str
    agent: str
    policy: Effective
    reserved_tokens: int
    reserved_cost: float
    output_cap: int | None  # per choice; None: leave the request's cap alone
    view: TaskView
    observed: list[Trip] = field(default_factory=list)  # trips in observe mode, first time only
    token: str = ""  # the backend's handle on the reservation
    local: bool = False  # reserved in memory while the shared state was unreachable


@dataclass(slots=True)
class Outcome:
    """What the call used, as the provider reported it (or as counted, when it did not)."""

    tokens: int
    cost_usd: float
    output_fingerprint: str | None
    request_fingerprint: str | None
    completed: bool  # the provider answered successfully; only then do the loop windows move
    preview: str = ""  # the start of the completion's text, for operators


@dataclass(slots=True)
class Settled:
    view: TaskView
    trips: list[Trip]  # new trips, whatever their action
    killed: bool  # the task was killed by one of them


# task, agent, text, policy, tool calls, tool results -> the trips to report with their action
ObserveContentNow = Callable[
    [str, str, str, Effective, Sequence[tuple[str, str]], Sequence[str]], list[tuple[Trip, str]]
]


class Ledger(Protocol):
    board: KillBoard
    detector_runs: int  # content-detector runs since start-up, for /metrics
    # ``observe_content`` done at once, where the content detectors' state is in this process
    # and no I/O is needed; None where it is elsewhere (await ``observe_content``).
    observe_content_now: ObserveContentNow | None

    async def reserve(self, plan: CallPlan) -> Grant: ...

    async def settle(self, grant: Grant, outcome: Outcome) -> Settled: ...

    async def kill(self, task: str, trip: Trip) -> bool:
        """Mark the task killed; False when it already was."""
        ...

    async def get(self, task: str) -> TaskView | None: ...

    async def create(
        self, task: str, *, tenant: str | None, owner: str | None, overrides: dict[str, float]
    ) -> TaskView:
        """Register a task ahead of its first call, with its own limits and owner."""
        ...

    async def resume(self, task: str, overrides: dict[str, float], note: str) -> TaskView | None:
        """Clear a kill (the human-approval path), optionally raising the task's limits."""
        ...

    async def extend(self, task: str, seconds: float, note: str) -> TaskView | None:
        """Move the task's deadline later."""
        ...

    async def deadline(self, task: str, policy_limit: float | None) -> tuple[float, float] | None:
        """When the task's clock started and the seconds it is allowed from then: its own
        ``max_duration`` over the policy's, plus every extension. None: no deadline (or no
        such task). Timers read this, so an ``extend`` or ``resume`` moves them."""
        ...

    async def observe_content(
        self,
        task: str,
        agent: str,
        text: str,
        policy: Effective,
        tool_calls: Sequence[tuple[str, str]] = (),
        tool_results: Sequence[str] = (),
    ) -> list[tuple[Trip, str]]:
        """Run the content detectors (cycle, near-duplicate, no progress, tool loop) on one
        completion; the trips to report with their action, a ``kill`` one already applied."""
        ...

    async def count_envelope(self, task: str, status: str) -> None:
        """Count one worker's status envelope of the task, by status."""
        ...

    async def list(self, tenant: str | None = None) -> list[TaskView]:
        """Every task's summary; with ``tenant``, only that tenant's, read from its index
        (a tenant admin's listing never walks other tenants' tasks)."""
        ...

    async def ready(self) -> bool:
        """Whether the state backend answers (``/readyz``)."""
        ...

    async def open_session(self, base: str, idle_gap: float) -> Span:
        """The session of untagged client ``base`` a call now belongs to: its current one, or
        a new one after an idle gap or once a killed session's cool-down is over
        (``proxy/session/sessions.py``)."""
        ...

    async def end_session(self, base: str, start: int, cooldown: float) -> float | None:
        """Mark a killed session to end ``cooldown`` from now (the first mark wins); when it
        ends, or None when the client is in another session already."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


CutCallback = Callable[[Trip], None]


# Kills this process saw lately, so a stream registering just after one still meets it.
RECENT_KILLS = 10_000


class KillBoard:
    """The streams in flight in this process, by task, so a kill can cut them at once.

    A stream registers before its request leaves for the provider, and registering checks the
    kills seen since the call was reserved: a kill that lands between the ledger's check and
    the registration (a pub/sub message, another call's trip) still ends the stream.
    """

    def __init__(self) -> None:
        self._streams: dict[str, set[CutCallback]] = {}
        self._recent: OrderedDict[str, tuple[float, Trip]] = OrderedDict()

    def watch(self, task: str, cut: CutCallback, since: float | None = None) -> None:
        """Cut ``cut``'s stream on the task's next kill, or at once when the task was killed
        at or after ``since`` (wall-clock seconds: when the call was reserved)."""
        recent = self._recent.get(task) if since is not None else None
        if recent is not None and since is not None and recent[0] >= since:
            cut(recent[1])
            return
        self._streams.setdefault(task, set()).add(cut)

    def unwatch(self, task: str, cut: CutCallback) -> None:
        callbacks = self._streams.get(task)
        if callbacks is not None:
            callbacks.discard(cut)
            if not callbacks:
                del self._streams[task]

    def watching(self, task: str) -> bool:
        """Whether a stream of the task is in flight in this process."""
        return task in self._streams

    def tasks(self) -> list[str]:
        return list(self._streams)

    def cut(self, task: str, trip: Trip) -> int:
        self._recent[task] = (time.time(), trip)
        self._recent.move_to_end(task)
        if len(self._recent) > RECENT_KILLS:
            self._recent.popitem(last=False)
        callbacks = self._streams.pop(task, set())
        for callback in callbacks:
            callback(trip)
        return len(callbacks)


def allowed_seconds(
    overrides: dict[str, float], extra: float, policy_limit: float | None
) -> float | None:
    """The task's time budget as both ledgers read it: 0 sets no deadline."""
    limit = overrides.get("max_duration", policy_limit)
    return limit + extra if limit else None


class Denied(Exception):
    """``reserve`` refuses the call: the task is killed (``fresh`` when this call killed it),
    or (``first_call``) the call would have been the task's first, and the task was not
    started: nothing of it is kept, so a later call within its limits may start it."""

    def __init__(self, task: str, trip: Trip, fresh: bool, *, first_call: bool = False) -> None:
        super().__init__(trip.detail)
        self.task = task
        self.trip = trip
        self.fresh = fresh
        self.first_call = first_call


class Unestimated(Exception):
    """``reserve`` cannot take the call without its prompt's estimate: the task has a token
    or dollar budget of its own. Nothing was written; the caller estimates and reserves again."""

    def __init__(self, task: str) -> None:
        super().__init__(task)
        self.task = task


class Busy(Exception):
    """``reserve`` cannot fit the call now, but calls in flight hold the budget it needs:
    the caller should retry once they settle. Not a trip: the task is not killed."""

    def __init__(self, task: str, in_flight_tokens: int) -> None:
        super().__init__(task)
        self.task = task
        self.in_flight_tokens = in_flight_tokens
