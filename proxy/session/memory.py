"""The embedded ledger: per-task state in this process, bounded in count, size and time.

Atomicity comes from the event loop: ``reserve`` and ``settle`` never await between reading and
writing a task, so concurrent calls of one task are checked one after another.
Memory is bounded three ways: tasks idle for ``task_ttl`` expire, at most ``max_tasks`` are kept
(least recently seen first out), and each task keeps windows of fingerprints, not histories.

A task record is kept small, since ``max_tasks`` of them may be held (bench/micro.py measures
it): slots objects, no dict or list a task does not use, fingerprint windows as packed 8-byte
digests, agent names interned, and the content detectors' state marshalled into one bytes
object, except for the tasks that completed a call most recently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import marshal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from proxy.config import Limits, StateSettings
from proxy.detectors import budget, limits, repeat
from proxy.detectors.base import Trip, TripReason, one_kill
from proxy.detectors.content import ContentState, observe_content
from proxy.detectors.registry import RESERVE, SETTLE
from proxy.detectors.spec import NO_BOUND, Check, Reservation
from proxy.policy.rules import Effective
from proxy.pricing import cost_usd
from proxy.session import persist
from proxy.session.base import (
    BUDGET_LIMITS,
    PREVIEWS_PER_TASK,
    TIMELINE_PER_TASK,
    Busy,
    CallPlan,
    Denied,
    Grant,
    KillBoard,
    ObserveContentNow,
    Outcome,
    Preview,
    Settled,
    TaskView,
    TimelineEvent,
    Unestimated,
    allowed_seconds,
)
from proxy.session.sessions import SessionBook, Span
from proxy.telemetry.logs import event

OTHER_AGENTS = "other"
# Tasks whose content-detector state stays as it is (a ``ContentState``) rather than
# marshalled: the ones that completed a call most recently, so a busy task pays for no
# conversion on each completion (about 6 us for a long task's state to marshal, 2 us to turn
# into tuples and back). A few thousand objects: nothing to a full collection.
WARM_CONTENT = 1024
_T = TypeVar("_T")
# The reserve checks, each with the limits it reads (its declared ``limits.*`` settings): one
# whose limits are all unset allows anything; one that declares none always runs.
_RESERVE_CHECKS = tuple(
    (
        detector.check,
        tuple(s.removeprefix("limits.") for s in detector.settings if s.startswith("limits.")),
    )
    for detector in RESERVE
    if detector.check
)
_LIMITS_KNOWN = 64  # policies' limits whose checks are remembered (see MemoryLedger._checks_of)
_DIGEST = 8  # bytes of one fingerprint in a window
_SETTLE_WINDOWS = len(SETTLE)


@dataclass(slots=True)
class _Agent:
    name: str
    tokens_used: int = 0
    tokens_reserved: int = 0
    # The agent's windows of the registry's agent-scoped settle detectors, by their position.
    windows: tuple[bytes, ...] = ()


@dataclass(slots=True)
class _Task:
    task: str
    started: float
    last_seen: float
    tokens_used: int = 0
    tokens_reserved: int = 0
    cost_used: float = 0.0
    cost_reserved: float = 0.0
    calls: int = 0
    hops: int = 0
    last_agent: str | None = None
    clocked: bool = False  # the deadline's clock runs: set by the first call checked
    # A tuple, not a dict: a task has a few agents, and an empty dict alone costs 64 bytes.
    agents: tuple[_Agent, ...] = ()
    # Windows are bytes (8-byte digests, oldest first) and the other sequences tuples of
    # strings and numbers, not lists or objects: the garbage collector stops tracking such
    # tuples, so 100k tasks' windows add nothing to a full collection's pause.
    windows: tuple[bytes, ...] = ()  # of the task-scoped settle detectors
    killed: Trip | None = None
    observed: frozenset[TripReason] = frozenset()
    max_tokens: int | None = None
    tenant: str | None = None
    owner: str | None = None
    overrides: dict[str, float] | None = None  # only tasks given their own limits
    extra_duration: float = 0.0
    # agent, fingerprint (its digest, see settle), text; agent, fingerprint, text; ...
    previews: tuple[str | bytes, ...] = ()
    # A ContentState while warm (WARM_CONTENT), else its ContentState.plain marshalled: under
    # half the tuples' size, the sketch that the cycle and near-duplicate states share written
    # once.
    content: ContentState | bytes = b""
    timeline: tuple[tuple[float, str, str], ...] = ()  # at, kind, detail
    envelopes: dict[str, int] | None = None  # only workers' tasks pay for the table

    def mark(self, kind: str, detail: str, at: float) -> None:
        self.timeline = _push(self.timeline, (at, kind, detail), TIMELINE_PER_TASK)


class MemoryLedger:
    def __init__(self, settings: StateSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock  # for steps without a CallPlan (kill, create, the timeline)
        self.board = KillBoard()
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        # Each tenant's tasks, so a tenant's listing reads only them.
        self._by_tenant: dict[str, set[str]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Killed tasks by kill time: kept past task_ttl and max_tasks (see _note_kill).
        self._killed: OrderedDict[str, float] = OrderedDict()
        self.detector_runs = 0  # content-detector runs, exposed on /metrics
        self.observe_content_now: ObserveContentNow | None = self._observe_content
        self._sessions = SessionBook(settings.max_tasks)
        self._warm: OrderedDict[str, None] = OrderedDict()  # see WARM_CONTENT
        # The checks that apply under each policy's limits, by the limits' identity (each kept
        # with its limits, so the identity cannot pass to another object meanwhile).
        self._checks: dict[int, tuple[Limits, tuple[Check, ...]]] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        path = self._persist_file
        if path is not None:
            records, sessions = await asyncio.to_thread(persist.read, path)
            self._restore(records)
            self._sessions.restore(sessions)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._persist()

    async def _sweep_forever(self) -> None:
        interval = min(self.settings.task_ttl / 4, 30.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.time())
            await self._persist()

    def sweep(self, now: float) -> int:
        """Drop tasks idle past the TTL; the dict is in last-seen order, so stop at the first
        live one. A killed task, or one with a stream in flight, is passed over (moved to the
        end): kills expire by their own retention, streams keep their task."""
        expired = 0
        horizon = now - self.settings.task_ttl
        for _ in range(len(self._tasks)):
            task = next(iter(self._tasks.values()))
            if task.last_seen > horizon:
                break
            if self._kept(task):
                self._tasks.move_to_end(task.task)
                continue
            self._forget(task.task)
            expired += 1
        return expired + self._expire_kills(now)

    def _forget_oldest(self) -> None:
        """Make room past ``max_tasks``: the least recently seen task that is neither killed
        nor streaming goes (other tasks' traffic never evicts a kill)."""
        for _ in range(len(self._tasks)):
            task = next(iter(self._tasks.values()))
            if not self._kept(task):
                self._forget(task.task)
                return
            self._tasks.move_to_end(task.task)

    def _forget(self, name: str) -> None:
        task = self._tasks.pop(name)
        self._killed.pop(name, None)
        self._warm.pop(name, None)
        if task.tenant is not None:
            tasks = self._by_tenant.get(task.tenant)
            if tasks is not None:
                tasks.discard(task.task)
                if not tasks:
                    del self._by_tenant[task.tenant]

    # -- the local file (state.persist_file) --------------------------------------------------

    @property
    def _persist_file(self) -> Path | None:
        # Only as the embedded ledger: Redis's fallback in open mode keeps no file.
        return self.settings.persist_file if self.settings.backend == "memory" else None

    async def _persist(self) -> None:
        path = self._persist_file
        if path is None:
            return
        killed = [t for t in self._tasks.values() if t.killed is not None]
        others = [t for t in reversed(self._tasks.values()) if t.killed is None]
        kept = killed + others[: max(persist.MAX_RECORDS - len(killed), 0)]
        records = [_record(task, self._killed.get(task.task)) for task in kept]
        sessions = self._sessions.saved(persist.MAX_RECORDS)
        try:
            await asyncio.to_thread(persist.write, path, records, sessions)
        except OSError as exc:
            event("state_file_unwritten", logging.ERROR, error=type(exc).__name__)

    def _restore(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                task = _from_record(record)
            except (KeyError, TypeError, ValueError):
                continue
            self._tasks[task.task] = task
            self._index(task)
            if task.killed is not None:
                self._killed[task.task] = float(record.get("killed_at") or self.clock())
        self._killed = OrderedDict(sorted(self._killed.items(), key=lambda item: item[1]))
        # Oldest first, as the sweep expects.
        self._tasks = OrderedDict(sorted(self._tasks.items(), key=lambda item: item[1].last_seen))

    # -- open mode's starting point -----------------------------------------------------------

    def seed(
        self,
        task: str,
        used: int,
        cost: float,
        killed: Trip | None,
        calls: int = 0,
        started: float | None = None,
    ) -> None:
        """Start (or bring up to date) a task from figures the shared state last gave: a
        Redis ledger in open mode spends from what was left, counts its calls on, keeps its
        deadline's clock, and refuses a killed task."""
        state = self._touch(task, self.clock())
        state.tokens_used = max(state.tokens_used, used)
        state.cost_used = max(state.cost_used, cost)
        state.calls = max(state.calls, calls)
        if started is not None and not state.clocked:
            state.started, state.clocked = started, True
        if killed is not None and state.killed is None:
            state.killed = killed
            self._note_kill(state)

    # -- kill retention ----------------------------------------------------------------------

    def _kept(self, task: _Task) -> bool:
        return task.killed is not None or self.board.watching(task.task)

    def _note_kill(self, task: _Task) -> None:
        """Keep a killed task for ``kill_retention``; past ``max_killed_tasks`` kills, the
        oldest kill goes first (a bound only kills can reach, not other traffic)."""
        self._killed[task.task] = self.clock()
        self._killed.move_to_end(task.task)
        while len(self._killed) > self.settings.max_killed_tasks:
            oldest, _ = self._killed.popitem(last=False)
            if oldest in self._tasks and not self.board.watching(oldest):
                self._forget(oldest)

    def _expire_kills(self, now: float) -> int:
        expired = 0
        horizon = now - self.settings.kill_retention
        while self._killed:
            name, at = next(iter(self._killed.items()))
            if at > horizon:
                break
            del self._killed[name]
            task = self._tasks.get(name)
            if task is not None and task.killed is not None and not self.board.watching(name):
                self._forget(name)
                expired += 1
        return expired

    def _index(self, task: _Task) -> None:
        if task.tenant is not None:
            self._by_tenant.setdefault(task.tenant, set()).add(task.task)

    # -- the protocol -----------------------------------------------------------------------

    def _touch(self, name: str, now: float) -> _Task:
        task = self._tasks.get(name)
        if task is None:
            task = _Task(name, started=now, last_seen=now)
            self._keep(task)
        else:
            self._tasks.move_to_end(name)
            task.last_seen = now
        return task

    def _keep(self, task: _Task) -> None:
        self._tasks[task.task] = task
        if len(self._tasks) > self.settings.max_tasks:
            self._forget_oldest()

    def _joined(self, task: _Task, name: str) -> tuple[str, _Agent | None]:
        """The agent's bucket (its own name, or ``other`` once the task has its maximum of
        agents) and the bucket's record, if it has joined the task."""
        joined = _find(task, name)
        if joined is not None or len(task.agents) < self.settings.max_agents_per_task:
            return name, joined
        return OTHER_AGENTS, _find(task, OTHER_AGENTS)

    def _agent(self, task: _Task, name: str) -> _Agent:
        bucket, agent = self._joined(task, name)
        if agent is None:
            agent = _Agent(sys.intern(bucket))
            task.agents = (*task.agents, agent)
        return agent

    def _task_of(self, plan: CallPlan) -> tuple[_Task, bool]:
        """The call's task, and whether it is new. A new task is kept only once its first
        call is let through: a first call refused leaves nothing behind, so refused calls of
        made-up ids neither fill the tables nor push other tasks out of them."""
        if plan.task in self._tasks:
            return self._touch(plan.task, plan.now), False
        return _Task(plan.task, started=plan.now, last_seen=plan.now), True

    def _checks_of(self, lim: Limits) -> tuple[Check, ...]:
        """The checks that apply under a policy's ``lim``, remembered: a policy's limits are one
        object for all its calls. A token's signed limits are a new one per call, so the table
        is emptied when full rather than grown."""
        known = self._checks.get(id(lim))
        if known is not None:
            return known[1]
        if len(self._checks) >= _LIMITS_KNOWN:
            self._checks.clear()
        checks = _checks_for(lim)
        self._checks[id(lim)] = (lim, checks)
        return checks

    def _trips_at_reserve(
        self, task: _Task, plan: CallPlan, checks: list[Trip], new: bool
    ) -> list[Trip]:
        """Under a killing policy the first trip kills the task (or, for a task's first call,
        refuses it and keeps nothing); in shadow mode, the trips not reported before."""
        observed: list[Trip] = []
        for trip in checks:
            if plan.policy.on_trip == "kill":
                if new:
                    raise Denied(plan.task, trip, fresh=False, first_call=True)
                task.killed = trip
                task.mark("kill", trip.detail, self.clock())
                self._note_kill(task)
                self.board.cut(plan.task, trip)
                raise Denied(plan.task, trip, fresh=True)
            if trip.reason not in task.observed:
                task.observed |= {trip.reason}
                observed.append(trip)
        return observed

    async def reserve(self, plan: CallPlan) -> Grant:
        task, new = self._task_of(plan)
        if task.killed is not None:
            raise Denied(plan.task, task.killed, fresh=False)
        if not plan.estimated and task.overrides and not BUDGET_LIMITS.isdisjoint(task.overrides):
            raise Unestimated(plan.task)
        _first_call(task, plan)
        if not new and task.tenant is not None:
            self._index(task)
        lim = plan.policy.limits
        if task.overrides:
            lim = lim.model_copy(update=task.overrides)
            checks = _checks_for(lim)
        else:
            checks = self._checks_of(lim)
        task.max_tokens = lim.max_tokens
        # The agent joins the task only once one of its calls is reserved.
        bucket, joined = self._joined(task, plan.agent)
        agent = joined or _Agent(sys.intern(bucket))
        # In field order, positionally: seventeen keyword arguments cost three times as much.
        state = Reservation(
            plan.task,
            plan.agent,
            plan.prompt_tokens,
            plan.price,
            plan.now,
            task.started,
            lim,
            lim.max_duration + task.extra_duration if lim.max_duration else None,
            task.tokens_used,
            task.tokens_reserved,
            agent.tokens_used,
            agent.tokens_reserved,
            task.cost_used,
            task.cost_reserved,
            task.calls,
            task.hops,
            task.last_agent,
        )
        allowances = [check(state) for check in checks]
        tripped: list[Trip] = []
        cap = plan.requested_output
        if any(a is not NO_BOUND for a in allowances):  # a bound or a trip: the usual call has none
            tripped = [a.trip for a in allowances if a.trip is not None]
            if plan.policy.on_trip == "kill" and not tripped and any(a.busy for a in allowances):
                raise Busy(plan.task, task.tokens_reserved)
            cap = budget.output_cap(plan.requested_output, plan.choices, allowances)
        if cap == 0 and not tripped:
            tripped.append(budget.too_many_choices(plan.choices))
        observed = self._trips_at_reserve(task, plan, tripped, new) if tripped else []
        # Shadow mode changes nothing the agent receives, so an over-budget cap is left alone.
        enforce = (
            plan.policy.on_trip == "kill"
            and cap is not None
            and cap != plan.requested_output
            and not tripped
        )
        if new:
            self._keep(task)
            self._index(task)
        output = cap * plan.choices if cap is not None else 0
        reserved = plan.prompt_tokens + output
        reserved_cost = 0.0
        if plan.price is not None:
            reserved_cost = cost_usd(plan.price, plan.prompt_tokens, output)
        task.calls += 1
        task.hops = limits.hops_after(task.last_agent, plan.agent, task.hops)
        task.last_agent = agent.name if bucket == plan.agent else sys.intern(plan.agent)
        if joined is None:
            task.agents = (*task.agents, agent)
        task.tokens_reserved += reserved
        agent.tokens_reserved += reserved
        if reserved_cost:  # adding 0.0 would still make a new float for the task to hold
            task.cost_reserved += reserved_cost
        return Grant(
            plan.task,
            plan.agent,
            plan.policy,
            reserved,
            reserved_cost,
            cap if enforce else None,
            self._view(task, details=False),
            observed,
        )

    async def settle(self, grant: Grant, outcome: Outcome) -> Settled:
        task = self._tasks.get(grant.task)
        if task is None:  # expired or evicted while in flight: nothing left to book against
            return Settled(self._empty_view(grant.task), [], False)
        agent = self._agent(task, grant.agent)
        task.tokens_reserved = max(task.tokens_reserved - grant.reserved_tokens, 0)
        agent.tokens_reserved = max(agent.tokens_reserved - grant.reserved_tokens, 0)
        if grant.reserved_cost:
            task.cost_reserved = max(task.cost_reserved - grant.reserved_cost, 0.0)
        task.tokens_used += outcome.tokens
        agent.tokens_used += outcome.tokens
        if outcome.cost_usd:
            task.cost_used += outcome.cost_usd
        trips = self._settle_windows(task, agent, grant, outcome) if outcome.completed else []
        killed = False
        if trips and grant.policy.on_trip == "kill" and task.killed is None:
            trips = [one_kill(trips)]
            task.killed = trips[0]
            task.mark("kill", trips[0].detail, self.clock())
            self._note_kill(task)
            killed = True
            self.board.cut(grant.task, trips[0])
        elif grant.policy.on_trip == "observe":
            trips = [t for t in trips if t.reason not in task.observed]
            task.observed |= {t.reason for t in trips}
        return Settled(self._view(task, details=False), trips, killed)

    def _settle_windows(
        self, task: _Task, agent: _Agent, grant: Grant, outcome: Outcome
    ) -> list[Trip]:
        """A completed call's preview, and its fingerprints in the settle-phase detectors'
        windows: the trips they make."""
        trips: list[Trip] = []
        output = outcome.output_fingerprint
        output_digest = b""
        if output is not None:
            # The digest stands for the fingerprint when it gives it back exactly (always, for
            # the proxy's own): it is shared with the output window and smaller than the text.
            exact = _hex_digest(output)
            output_digest = exact if exact is not None else _digest(output)
            shown = exact if exact is not None else output
            preview = (sys.intern(grant.agent), shown, outcome.preview)
            task.previews = _push_many(task.previews, preview, PREVIEWS_PER_TASK)
        for index, detector in enumerate(SETTLE):
            fingerprint: str | None = getattr(outcome, detector.fingerprint)
            if fingerprint is None or detector.bounds is None:
                continue
            threshold, size = detector.bounds(grant.policy)
            holder = task if detector.window == "task" else agent
            windows = holder.windows
            if len(windows) < _SETTLE_WINDOWS:
                windows += (b"",) * (_SETTLE_WINDOWS - len(windows))
            digest = output_digest if fingerprint is output else _digest(fingerprint)
            window = _push_digest(windows[index], digest, size)
            holder.windows = (*windows[:index], window, *windows[index + 1 :])
            seen = _count(window, digest)
            if seen >= threshold:  # the usual fingerprint is new: no verdict to make
                trip = repeat.window_trip(
                    detector,
                    seen,
                    threshold,
                    size,
                    len(window) // _DIGEST,
                    grant.agent,
                    fingerprint,
                )
                if trip is not None:
                    trips.append(trip)
        return trips

    async def kill(self, task_name: str, trip: Trip) -> bool:
        task = self._touch(task_name, self.clock())
        if task.killed is not None:
            return False
        if not task.clocked:  # a kill before any call starts the deadline's clock
            task.started, task.clocked = task.last_seen, True
        task.killed = trip
        task.mark("kill", trip.detail, self.clock())
        self._note_kill(task)
        self.board.cut(task_name, trip)
        return True

    async def observe_content(
        self,
        task: str,
        agent: str,
        text: str,
        policy: Effective,
        tool_calls: Sequence[tuple[str, str]] = (),
        tool_results: Sequence[str] = (),
    ) -> list[tuple[Trip, str]]:
        return self._observe_content(task, agent, text, policy, tool_calls, tool_results)

    def _observe_content(
        self,
        task: str,
        agent: str,
        text: str,
        policy: Effective,
        tool_calls: Sequence[tuple[str, str]] = (),
        tool_results: Sequence[str] = (),
    ) -> list[tuple[Trip, str]]:
        state = self._tasks.get(task)
        if state is None or state.killed is not None:
            return []
        content, trips = observe_content(
            _unpack(state.content),
            agent,
            text,
            cycle=policy.cycle,
            near_duplicate=policy.near_duplicate,
            no_progress=policy.no_progress,
            tool_loop=policy.tool_loop,
            tool_calls=tool_calls,
            tool_results=tool_results,
        )
        self.detector_runs += 1
        state.content = content
        self._warm_up(task)
        reported: list[tuple[Trip, str]] = []
        for trip in trips:
            action = policy.action_for(trip.reason)
            if action == "kill":
                if state.killed is None:
                    state.killed = trip
                    state.mark("kill", trip.detail, self.clock())
                    self._note_kill(state)
                    self.board.cut(task, trip)
                    reported.append((trip, action))
            elif trip.reason not in state.observed:
                state.observed |= {trip.reason}
                reported.append((trip, action))
        return reported

    def _warm_up(self, name: str) -> None:
        """Keep the task's content state as it is, and marshal the state of the task that
        has gone longest without a completion once more than ``WARM_CONTENT`` are kept so."""
        self._warm[name] = None
        self._warm.move_to_end(name)
        if len(self._warm) > WARM_CONTENT:
            coldest, _ = self._warm.popitem(last=False)
            task = self._tasks.get(coldest)
            if task is not None and isinstance(task.content, ContentState):
                task.content = marshal.dumps(task.content.plain())

    async def count_envelope(self, task: str, status: str) -> None:
        state = self._tasks.get(task)
        if state is not None:
            if state.envelopes is None:
                state.envelopes = {}
            state.envelopes[status] = state.envelopes.get(status, 0) + 1

    async def create(
        self, task: str, *, tenant: str | None, owner: str | None, overrides: dict[str, float]
    ) -> TaskView:
        state = self._touch(task, self.clock())
        state.tenant = tenant if tenant is not None else state.tenant
        self._index(state)
        state.owner = owner if owner is not None else state.owner
        _override(state, overrides)
        state.mark("created", _describe_limits(overrides), self.clock())
        return self._view(state)

    async def resume(self, task: str, overrides: dict[str, float], note: str) -> TaskView | None:
        state = self._tasks.get(task)
        if state is None:
            return None
        state.killed = None
        self._killed.pop(task, None)
        state.observed = frozenset()
        _override(state, overrides)
        state.mark("resume", f"{note} {_describe_limits(overrides)}".strip(), self.clock())
        return self._view(state)

    async def extend(self, task: str, seconds: float, note: str) -> TaskView | None:
        state = self._tasks.get(task)
        if state is None:
            return None
        state.extra_duration += seconds
        state.mark("extend", f"deadline moved {seconds:.0f}s later {note}".strip(), self.clock())
        return self._view(state)

    # -- the task's deadline -----------------------------------------------------------------

    async def deadline(self, task: str, policy_limit: float | None) -> tuple[float, float] | None:
        state = self._tasks.get(task)
        if state is None or not state.clocked:  # the clock starts at the first call
            return None
        allowed = allowed_seconds(state.overrides or {}, state.extra_duration, policy_limit)
        return None if allowed is None else (state.started, allowed)

    async def get(self, task: str) -> TaskView | None:
        state = self._tasks.get(task)
        return self._view(state) if state is not None else None

    async def list(self, tenant: str | None = None) -> list[TaskView]:
        if tenant is None:
            return [self._view(task) for task in self._tasks.values()]
        # Only that tenant's tasks are read: a tenant admin's listing costs its own tasks.
        names = self._by_tenant.get(tenant, ())
        return [self._view(self._tasks[name]) for name in names if name in self._tasks]

    # -- views ------------------------------------------------------------------------------

    # -- sessions of untagged traffic -------------------------------------------------------

    async def open_session(self, base: str, idle_gap: float) -> Span:
        return self._sessions.open(base, self.clock(), idle_gap)

    async def end_session(self, base: str, start: int, cooldown: float) -> float | None:
        return self._sessions.end(base, start, self.clock(), cooldown)

    @staticmethod
    def _view(task: _Task, details: bool = True) -> TaskView:
        """The task's figures; with ``details``, its previews, timeline and envelope counts
        too, which only the admin API reads (a call's grant and settlement do without, as
        the Redis ledger's do)."""
        overrides = task.overrides
        max_tokens = task.max_tokens
        if overrides is not None and "max_tokens" in overrides:
            max_tokens = int(overrides["max_tokens"])
        # Positional: a call builds two of these.
        view = TaskView(
            task.task,
            task.started,
            task.last_seen,
            task.tokens_used,
            task.tokens_reserved,
            task.cost_used,
            task.calls,
            task.hops,
            [agent.name for agent in task.agents],
            task.killed,
            max_tokens,
            task.tenant,
            task.owner,
            dict(overrides) if overrides is not None else {},
            task.extra_duration,
        )
        if details:
            previews = task.previews
            view.previews = [_preview(*previews[i : i + 3]) for i in range(0, len(previews), 3)]
            view.timeline = [TimelineEvent(*entry) for entry in task.timeline]
            view.envelopes = dict(task.envelopes or {})
        return view

    @staticmethod
    def _empty_view(name: str) -> TaskView:
        return TaskView(name, 0.0, 0.0, 0, 0, 0.0, 0, 0, [], None)


def _record(task: _Task, killed_at: float | None) -> dict[str, Any]:
    return {
        "killed_at": killed_at,
        "task": task.task,
        "started": task.started,
        "last_seen": task.last_seen,
        "clocked": task.clocked,
        "tokens_used": task.tokens_used,
        "cost_used": task.cost_used,
        "calls": task.calls,
        "hops": task.hops,
        "last_agent": task.last_agent,
        # Each agent's spend, for per-agent budgets (its bucket's, "other" included).
        "agents": {agent.name: agent.tokens_used for agent in task.agents},
        "max_tokens": task.max_tokens,
        "tenant": task.tenant,
        "owner": task.owner,
        "overrides": task.overrides or {},
        "extra_duration": task.extra_duration,
        "killed": task.killed.to_json() if task.killed is not None else None,
        "timeline": [list(entry) for entry in task.timeline],
    }


def _from_record(record: dict[str, Any]) -> _Task:
    killed = record.get("killed")
    return _Task(
        task=str(record["task"]),
        started=float(record["started"]),
        last_seen=float(record["last_seen"]),
        clocked=bool(record.get("clocked", True)),
        tokens_used=int(record.get("tokens_used", 0)),
        cost_used=float(record.get("cost_used", 0.0)),
        calls=int(record.get("calls", 0)),
        hops=int(record.get("hops", 0)),
        last_agent=None if record.get("last_agent") is None else str(record["last_agent"]),
        agents=tuple(
            _Agent(sys.intern(str(name)), tokens_used=int(used))
            for name, used in dict(record.get("agents") or {}).items()
        ),
        max_tokens=None if record.get("max_tokens") is None else int(record["max_tokens"]),
        tenant=record.get("tenant"),
        owner=record.get("owner"),
        overrides={str(k): float(v) for k, v in dict(record.get("overrides") or {}).items()}
        or None,
        extra_duration=float(record.get("extra_duration", 0.0)),
        killed=Trip.from_json(killed) if isinstance(killed, str) else None,
        timeline=tuple(
            (float(at), str(kind), str(detail))
            for at, kind, detail in list(record.get("timeline") or [])[-TIMELINE_PER_TASK:]
        ),
    )


def _checks_for(lim: Limits) -> tuple[Check, ...]:
    return tuple(
        check
        for check, names in _RESERVE_CHECKS
        if not names or any(getattr(lim, name) is not None for name in names)
    )


def _first_call(task: _Task, plan: CallPlan) -> None:
    """What a task's first call settles: its clock (the deadline runs from the first call
    checked, not from creation ahead of it nor from a kill before it), and the tenant and owner
    its token names."""
    if not task.clocked:
        task.started = plan.now
        task.clocked = True
    if task.tenant is None:
        task.tenant = plan.tenant
    if task.owner is None:
        task.owner = plan.owner


def _preview(agent: str | bytes, fingerprint: str | bytes, text: str | bytes) -> Preview:
    shown = fingerprint.hex() if isinstance(fingerprint, bytes) else fingerprint
    return Preview(str(agent), shown, str(text))


def _find(task: _Task, name: str) -> _Agent | None:
    for agent in task.agents:
        if agent.name == name:
            return agent
    return None


def _override(task: _Task, overrides: dict[str, float]) -> None:
    if overrides:
        task.overrides = {**(task.overrides or {}), **overrides}


def _unpack(content: ContentState | bytes) -> ContentState:
    if isinstance(content, bytes):
        return ContentState.from_plain(marshal.loads(content)) if content else ContentState()
    return content


def _digest(fingerprint: str) -> bytes:
    """The fingerprint's 8 bytes: the proxy's fingerprints are 16 lowercase hex digits (of an
    8-byte blake2b), read back as such; any other string is hashed to 8."""
    digest = _hex_digest(fingerprint)
    if digest is not None:
        return digest
    return hashlib.blake2b(fingerprint.encode(), digest_size=_DIGEST).digest()


def _hex_digest(fingerprint: str) -> bytes | None:
    """The 8 bytes a fingerprint of 16 lowercase hex digits gives back exactly, else None."""
    if len(fingerprint) != 2 * _DIGEST:
        return None
    try:
        digest = bytes.fromhex(fingerprint)
    except ValueError:
        return None
    return digest if digest.hex() == fingerprint else None  # not "AB..." nor "00 11 ..."


def _push_digest(window: bytes, digest: bytes, size: int) -> bytes:
    """``window`` with ``digest`` appended, keeping the last ``size`` (as ``_push``)."""
    keep = max(size - 1, 0) * _DIGEST
    return (window[len(window) - keep :] if len(window) > keep else window) + digest


def _count(window: bytes, digest: bytes) -> int:
    """How often ``digest`` is one of the window's entries (a match across two entries is
    not one)."""
    seen = 0
    at = window.find(digest)
    while at >= 0:
        if at % _DIGEST == 0:
            seen += 1
        at = window.find(digest, at + 1)
    return seen


def _push_many(window: tuple[_T, ...], entries: tuple[_T, ...], size: int) -> tuple[_T, ...]:
    """A window of ``size`` groups of ``len(entries)``, flattened into one tuple: one tuple
    object however many groups it holds."""
    width = len(entries)
    keep = max(size - 1, 0) * width
    return (*window[len(window) - keep :], *entries) if len(window) > keep else (*window, *entries)


def _describe_limits(overrides: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(overrides.items()))


def _push(window: tuple[_T, ...], entry: _T, size: int) -> tuple[_T, ...]:
    """``window`` with ``entry`` appended, keeping the last ``size``; windows are sized by
    policy, which a rule may change between calls of one task."""
    keep = max(size - 1, 0)
    return (*window[len(window) - keep :], entry) if len(window) > keep else (*window, entry)
