"""The shared ledger: task state in Redis, so every replica enforces the same limits.

One round trip before forwarding and one after: ``reserve`` and ``settle`` are single Lua
scripts (``redis_scripts.py``), and the settle's reply carries what the content detectors need
to run next, so their update after the response is one more script call, with no read. Script
calls issued at the same moment share a write and a read (``redis_calls.py``). Kills are
published on a channel every replica subscribes to, and each replica re-checks the killed flags
of its streams in flight after a reconnect and every second, so a lost message cannot let a
stream run on.

When Redis cannot be reached, ``on_state_error`` decides: ``closed`` refuses calls with
``StateUnavailable`` until it answers again; ``open`` forwards them, accounting in memory, and
writes the counts back when Redis returns. Usage of calls that finish while Redis is away is
kept and written back in both modes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError

from proxy import jsonio
from proxy.config import StateSettings
from proxy.detectors import repeat
from proxy.detectors.base import Trip, one_kill
from proxy.detectors.content import observe_content
from proxy.detectors.registry import SETTLE
from proxy.detectors.spec import Detector
from proxy.errors import StateUnavailable
from proxy.policy.rules import Effective
from proxy.pricing import cost_usd
from proxy.session import redis_scripts, sessions
from proxy.session.base import (
    OVERRIDABLE,
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
from proxy.session.batches import KeyedBatches
from proxy.session.detector_states import KnownStates, decode, encode
from proxy.session.memory import MemoryLedger
from proxy.session.redis_calls import Script, ScriptCalls
from proxy.session.redis_client import build_client
from proxy.session.sessions import Span
from proxy.telemetry.logs import event
from proxy.telemetry.metrics import Metrics

_UNREACHABLE = (RedisError, OSError, TimeoutError)
RECHECK_INTERVAL_S = 1.0
MAX_PENDING = 100_000
MAX_KNOWN = 100_000  # tasks whose last figures open mode remembers
# A reserve, settle or kill may take this many redis_timeouts at most, its retry included.
STEP_TIMEOUTS = 4
# Tasks read per round trip when listing them all.
LIST_BATCH = 500
# (tenant, task) pairs this replica listed in their tenant's index, so it lists each once.
MAX_INDEXED = 100_000
# Replicas updating one task's detector state at the same instant retry this many times.
CONTENT_SWAP_ATTEMPTS = 5


@dataclass(slots=True)
class _Pending:
    """A settle that could not be written: replayed when Redis answers again."""

    task: str
    agent: str
    member: str
    tokens: int
    cost: float
    calls: int  # 1 for a call reserved in memory (open mode), whose call Redis never saw


@dataclass(slots=True)
class _Known:
    used: int = 0  # tokens used and reserved, as last read
    cost: float = 0.0
    killed: Trip | None = None
    calls: int = 0
    started: float | None = None  # the deadline's clock


@dataclass(slots=True, frozen=True)
class _Completion:
    """A completion waiting for the content detectors."""

    agent: str
    text: str
    policy: Effective
    tool_calls: Sequence[tuple[str, str]]
    tool_results: Sequence[str]


@functools.lru_cache(maxsize=4096)
def key_part(name: str) -> str:
    """An id as it stands inside a key name: braces, colons, glob characters, ``%`` and
    anything not printable ASCII are percent-escaped, so no task or agent id can close the
    ``{task}`` hash tag, reach into another key's name, or match another key's pattern."""
    return quote(name, safe="/@!$&'()+,;=")


# Agent buckets whose window keys a task's ``Keys`` keeps (those of more are built per call).
MAX_BUCKETS_KEPT = 8


class Keys:
    """Key names of one task; the ``{task}`` hash tag keeps them in one cluster slot."""

    def __init__(self, prefix: str, task: str) -> None:
        self.task = task
        self._settle_windows: dict[str, tuple[str, ...]] = {}
        base = f"{prefix}:{{{key_part(task)}}}"
        self.state = f"{base}:s"
        self.agents = f"{base}:a"
        self.reservations = f"{base}:z"
        self.previews = f"{base}:p"
        self.timeline = f"{base}:t"
        self.settled = f"{base}:d"
        self.windows_prefix = f"{base}:w:"

    def window(self, detector: Detector, agent: str) -> str:
        """A settle-phase detector's window: the task's, or the agent's (its budget bucket)."""
        key = f"{self.windows_prefix}{detector.reason}"
        return key if detector.window == "task" else f"{key}:{key_part(agent)}"

    def settle_windows(self, agent: str) -> tuple[str, ...]:
        """The windows of every settle-phase detector for the agent's bucket, in registry
        order: built once per bucket (a task's agents are bounded by ``max_agents_per_task``)."""
        windows = self._settle_windows.get(agent)
        if windows is None:
            windows = tuple(self.window(detector, agent) for detector in SETTLE)
            if len(self._settle_windows) < MAX_BUCKETS_KEPT:
                self._settle_windows[agent] = windows
        return windows


# A task's calls name the same keys: built once while it is among the last ones active.
_keys_of = functools.lru_cache(maxsize=1024)(Keys)


def _timeline_event(entry: str) -> TimelineEvent:
    record = json.loads(entry)
    if "trip" in record:  # written by a Lua script, which leaves the sentence to Python
        record["detail"] = Trip.from_json(json.dumps(record.pop("trip"))).detail
    return TimelineEvent(**record)


def _timeline_entry(kind: str, detail: str) -> str:
    return json.dumps({"at": time.time(), "kind": kind, "detail": detail})


def _describe(overrides: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(overrides.items()))


def _placeholder(plan: CallPlan) -> int:
    """A token held in Redis for the prompt of a call reserved without its estimate: the call
    counts in its task's reserved tokens until it settles, even without a cap, so a settle
    held back by an outage is seen from outside (a reader waiting for nothing to be reserved
    waits for it). The grant, as the embedded ledger's, does not count it."""
    return 0 if plan.estimated or plan.prompt_tokens else 1


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


class RedisLedger:
    # A call sent without its prompt's estimate, of a task with a budget of its own, is
    # refused by the reserve (``Unestimated``): the caller need not estimate every call.
    asks_for_estimates = True

    def __init__(
        self,
        settings: StateSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        # None: the scripts read the Redis server's clock, one clock for every replica.
        self.clock = clock
        self.metrics = metrics
        self._step_timeout = STEP_TIMEOUTS * settings.redis_timeout
        # How long a killed task's keys live, set by every script that touches them.
        self._retention = int(max(settings.kill_retention, settings.task_ttl))
        self.board = KillBoard()
        self.client = build_client(settings)
        self.channel = f"{settings.key_prefix}:kills:v{redis_scripts.VERSION}"
        # A cluster client routes each script call to its slot's node itself.
        self._calls = None if isinstance(self.client, RedisCluster) else ScriptCalls(self.client)
        self._reserve = self._resilient(redis_scripts.RESERVE, "reserve")
        self._settle = self._resilient(redis_scripts.SETTLE, "settle")
        self._kill = self._resilient(redis_scripts.KILL, "kill")
        self._content_swap = self._resilient(redis_scripts.CONTENT_SWAP, "content")
        self._open_session = self._resilient(sessions.OPEN, "open_session")
        self._end_session = self._resilient(sessions.END, "end_session")
        self._indexed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._content: KeyedBatches[_Completion, builtins.list[Trip]] = KeyedBatches(
            self._swap_content
        )
        self.detector_runs = 0  # content-detector runs, exposed on /metrics
        self.observe_content_now: ObserveContentNow | None = None  # the state is in Redis
        self._states = KnownStates()
        self._fallback = MemoryLedger(settings, clock=clock or time.time)
        self._pending: deque[_Pending] = deque(maxlen=MAX_PENDING)
        # Open mode: what this replica last knew of tasks, and kills decided while Redis was
        # away (see _remember).
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._kills_pending: OrderedDict[str, Trip] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.reachable = True

    def _resilient(self, source: str, operation: str) -> Any:
        """A script's call. After a Redis restart every pooled connection is dead: drop them
        and try once more on a fresh one, rather than fail the call that happened to pick a
        stale one. The same after a failover behind a DNS name: connections to the demoted
        primary answer READONLY (a Sentinel-managed pool turns that into a connection error
        itself)."""
        calls = self._calls
        if calls is not None:
            known = Script(source)

            async def script(keys: list[str], args: list[Any], deferrable: bool) -> Any:
                return await calls.call(known, keys, args, deferrable=deferrable)

        else:
            registered = self.client.register_script(source)

            async def script(keys: list[str], args: list[Any], deferrable: bool) -> Any:
                return await registered(keys=keys, args=args)

        async def attempt(keys: list[str], args: list[Any], deferrable: bool) -> Any:
            try:
                return await script(keys, args, deferrable)
            except (RedisConnectionError, ReadOnlyError):
                pool = getattr(self.client, "connection_pool", None)
                if pool is None:  # a cluster client reconnects by itself
                    raise
                if calls is not None:
                    await calls.release_idle()
                await pool.disconnect(inuse_connections=False)
                return await script(keys, args, deferrable)

        # What each step took, as the caller waited for it: the share of a call's added
        # latency that is Redis's (``tripwire_state_backend_seconds``).
        took = (
            self.metrics.state_latency.child(("redis", operation))
            if self.metrics is not None
            else None
        )

        async def run(keys: list[str], args: list[Any], deferrable: bool = False) -> Any:
            """``deferrable``: no client waits on it (``ScriptCalls.call``)."""
            started = time.perf_counter()
            try:
                # Each wait inside redis-py has its own bound (a free connection, connecting,
                # the reply); this one bounds the whole step, retry included, so no call can
                # hang on Redis whatever state the client's pool is left in by a restart.
                async with asyncio.timeout(self._step_timeout):
                    return await attempt(keys, args, deferrable)
            finally:
                if took is not None:
                    took.observe(time.perf_counter() - started)

        return run

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if isinstance(self.client, RedisCluster):
            # Learn the slot map before traffic: the client would otherwise do it on the first
            # calls, concurrently.
            with contextlib.suppress(*_UNREACHABLE):
                await self.client.initialize()
        await self._fallback.start()
        self._tasks = [
            asyncio.create_task(self._listen_for_kills()),
            asyncio.create_task(self._maintain()),
        ]

    async def close(self) -> None:
        # Every wait here is bounded: closing connections to a Redis that just restarted must
        # not hold up a shutdown.
        bound = self._step_timeout
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=bound)
        with contextlib.suppress(*_UNREACHABLE):
            async with asyncio.timeout(bound):
                await self._flush_pending()
        if self._calls is not None:
            await self._calls.close(bound)
        await self._fallback.close()
        with contextlib.suppress(*_UNREACHABLE):
            async with asyncio.timeout(bound):
                await self.client.aclose()

    async def ready(self) -> bool:
        try:
            await self.client.ping()
        except _UNREACHABLE:
            self._unreachable("ping")
            return False
        return True

    def _unreachable(self, where: str, error: BaseException | None = None) -> None:
        if self.metrics is not None:
            self.metrics.state_errors.labels("redis", where).inc()
        if self.reachable:
            event(
                "state_unreachable",
                logging.ERROR,
                backend="redis",
                during=where,
                error=type(error).__name__ if error else None,
                on_state_error=self.settings.on_state_error,
            )
        self.reachable = False

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    def _keys(self, task: str) -> Keys:
        return _keys_of(self.settings.key_prefix, task)

    # -- the protocol -----------------------------------------------------------------------

    async def reserve(self, plan: CallPlan) -> Grant:
        keys = self._keys(plan.task)
        lim = plan.policy.limits
        prompt_cost, out_price = -1.0, 0.0
        if plan.price is not None:
            prompt_cost = cost_usd(plan.price, plan.prompt_tokens, 0)
            out_price = plan.price.for_input(plan.prompt_tokens).output_per_token
        args = [
            plan.agent,
            plan.prompt_tokens + _placeholder(plan),
            -1 if plan.requested_output is None else plan.requested_output,
            plan.choices,
            *(
                -1 if v is None else v
                for v in (
                    lim.max_tokens,
                    lim.max_tokens_per_agent,
                    lim.max_cost_usd,
                    lim.max_calls,
                    lim.max_hops,
                    lim.max_duration,
                )
            ),
            repr(prompt_cost),
            repr(out_price),
            plan.policy.on_trip,
            int(self.settings.task_ttl),
            os.urandom(8).hex(),
            int(self.settings.reservation_ttl),
            self.settings.max_agents_per_task,
            plan.task,
            plan.price.model_id if plan.price is not None else "",
            self.channel,
            plan.tenant or "",
            plan.owner or "",
            self._now(),
            self._retention,
            1 if plan.estimated else 0,
        ]
        try:
            reply = await self._reserve(
                keys=[keys.state, keys.agents, keys.reservations, keys.timeline, keys.settled],
                args=args,
            )
        except _UNREACHABLE as error:
            self._unreachable("reserve", error)
            if self.settings.on_state_error == "open":
                grant = await self._reserve_locally(plan)
                grant.local = True
                return grant
            raise StateUnavailable(
                "Tripwire cannot reach its state store (Redis), so it cannot check this task's "
                "limits; calls are refused until Redis answers again."
            ) from error
        self.reachable = True
        grant = self._grant(plan, reply)
        if plan.tenant is not None and (plan.tenant, plan.task) not in self._indexed:
            await self._index(plan.tenant, plan.task)
        return grant

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.settings.key_prefix}:tenant:{key_part(tenant)}:tasks"

    async def _index(self, tenant: str, task: str) -> None:
        """List the task under its tenant, once per replica (a bounded memory of what was
        listed), so a tenant's listing reads only its own tasks. The set lives a kill's
        retention past the tenant's last new task, so the tenant's killed tasks stay listed;
        names of expired tasks are dropped when it is read."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.sadd(self._tenant_key(tenant), task)
                pipe.expire(self._tenant_key(tenant), self._retention)
                await pipe.execute()
        except _UNREACHABLE as error:
            self._unreachable("index", error)
            return
        self._indexed[(tenant, task)] = None
        if len(self._indexed) > MAX_INDEXED:
            self._indexed.popitem(last=False)

    def _grant(self, plan: CallPlan, reply: list[Any]) -> Grant:
        verdict = reply[0]
        if verdict == "killed":
            self._remember(plan.task, killed=Trip.from_json(reply[1]))
            raise Denied(plan.task, Trip.from_json(reply[1]), fresh=False)
        if verdict == "trip":
            trip = Trip.from_json(reply[1])
            self._remember(plan.task, killed=trip)
            self.board.cut(plan.task, trip)
            raise Denied(plan.task, trip, fresh=True)
        if verdict == "refused":  # the task's first call: nothing was written
            raise Denied(plan.task, Trip.from_json(reply[1]), fresh=False, first_call=True)
        if verdict == "busy":
            raise Busy(plan.task, int(_num(reply[1])))
        if verdict == "estimate":
            raise Unestimated(plan.task)
        (
            _,
            cap,
            member,
            reserved_tokens,
            reserved_cost,
            started,
            used,
            reserved,
            cost,
            calls,
            hops,
            observed,
            *limits,
        ) = reply
        # Usually "[]", and no limits of the task's own: neither is parsed then.
        records = jsonio.loads(observed) if observed != "[]" else []
        started_at, cost_usd, calls_made = _num(started), _num(cost), int(calls)
        self._remember(
            plan.task,
            int(used) + int(reserved),
            cost_usd,
            calls=calls_made,
            started=started_at,
        )
        overrides = (
            {
                name: _num(value)
                for name, value in zip(OVERRIDABLE, limits[:-1], strict=True)
                if value
            }
            if any(limits)
            else {}
        )
        max_tokens = overrides.get("max_tokens", plan.policy.limits.max_tokens)
        # Positional, as the embedded ledger builds it: a call builds two.
        view = TaskView(
            plan.task,
            started_at,
            time.time(),
            int(used),
            int(reserved),
            cost_usd,
            calls_made,
            int(hops),
            [],
            None,
            None if max_tokens is None else int(max_tokens),
            None,
            None,
            overrides,
            _num(limits[-1]) if limits[-1] else 0.0,
        )
        return Grant(
            plan.task,
            plan.agent,
            plan.policy,
            int(reserved_tokens) - _placeholder(plan),
            _num(reserved_cost),
            None if int(cap) < 0 else int(cap),
            view,
            [Trip.from_json(json.dumps(r)) for r in records] if isinstance(records, list) else [],
            token=member,
        )

    async def settle(self, grant: Grant, outcome: Outcome) -> Settled:
        if grant.local:
            settled = await self._fallback.settle(grant, outcome)
            if settled.killed and settled.trips:
                self._pend_kill(grant.task, settled.trips[0])
            # Its own id, so that a write-back whose reply is lost is not counted twice.
            member = f"local:{uuid.uuid4().hex}"
            self._pend(
                _Pending(grant.task, grant.agent, member, outcome.tokens, outcome.cost_usd, 1)
            )
            return settled
        preview = ""
        if outcome.completed and outcome.output_fingerprint is not None:
            preview = jsonio.dumps(
                {
                    "agent": grant.agent,
                    "fingerprint": outcome.output_fingerprint,
                    "text": outcome.preview,
                }
            ).decode()
        # The content detectors run on a completed answer next: the reply brings their state
        # when this replica's is not the task's current one.
        held = ""
        if outcome.completed and grant.policy.content_detection:
            held = self._states.version(grant.task)
        try:
            reply = await self._run_settle(
                grant.task,
                grant.agent,
                grant.token,
                outcome.tokens,
                outcome.cost_usd,
                fingerprints=tuple(
                    (
                        (getattr(outcome, detector.fingerprint) or "") if outcome.completed else "",
                        detector.bounds(grant.policy)[1] if detector.bounds else 1,
                    )
                    for detector in SETTLE
                ),
                preview=preview,
                held=held,
            )
        except _UNREACHABLE as error:
            self._unreachable("settle", error)
            self._pend(
                _Pending(grant.task, grant.agent, grant.token, outcome.tokens, outcome.cost_usd, 0)
            )
            view = grant.view
            view.tokens_used += outcome.tokens
            return Settled(view, [], False)
        self.reachable = True
        if held:
            self._states.told(grant.task, held, reply[-2], reply[-1])
        return await self._after_settle(grant, outcome, reply)

    async def _run_settle(
        self,
        task: str,
        agent: str,
        member: str,
        tokens: int,
        cost: float,
        *,
        fingerprints: tuple[tuple[str, int], ...] = (),
        preview: str = "",
        calls: int = 0,
        held: str = "",
    ) -> Any:
        """``fingerprints``: for each settle-phase detector of the registry, in order, the
        fingerprint to observe ('' for none) and its window's size. ``held``: the version of
        the task's content-detector state this replica holds, '' when it needs none."""
        keys = self._keys(task)
        bucket = member.split("|", 3)[3] if member.count("|") >= 3 else agent
        watched = fingerprints or tuple(("", 1) for _ in SETTLE)
        return await self._settle(
            keys=[
                keys.state,
                keys.agents,
                keys.reservations,
                keys.previews,
                keys.settled,
                *keys.settle_windows(bucket),
            ],
            args=[
                member,
                tokens,
                repr(cost),
                agent,
                int(self.settings.task_ttl),
                calls,
                preview,
                self._retention,
                held,
                *(value for pair in watched for value in pair),
            ],
        )

    async def _after_settle(self, grant: Grant, outcome: Outcome, reply: list[Any]) -> Settled:
        # The figures, the windows' counts, the replay flag, the content state's version and
        # state (redis_scripts.SETTLE).
        used, reserved, cost, calls, hops, started, last_seen, killed = reply[:8]
        counts = [int(x) for x in reply[8 : 8 + 2 * len(SETTLE)]]
        view = TaskView(
            grant.task,
            _num(started),
            _num(last_seen),
            int(_num(used)),
            max(int(_num(reserved)), 0),
            _num(cost),
            int(_num(calls)),
            int(_num(hops)),
            [],
            Trip.from_json(killed) if killed else None,
            grant.policy.limits.max_tokens,
        )
        self._remember(
            grant.task,
            view.tokens_used + view.tokens_reserved,
            view.cost_usd,
            calls=view.calls,
            started=view.started or None,
        )
        trips: builtins.list[Trip] = []
        for index, detector in enumerate(SETTLE):
            fingerprint = getattr(outcome, detector.fingerprint) or ""
            if not fingerprint or detector.bounds is None:
                continue
            threshold, size = detector.bounds(grant.policy)
            seen, length = counts[2 * index], counts[2 * index + 1]
            trip = repeat.window_trip(
                detector, seen, threshold, size, length, grant.agent, fingerprint
            )
            trips.extend([trip] if trip else [])
        if trips and grant.policy.on_trip == "observe":
            # Shadow mode reports a reason once per task, as the reserve script does.
            trips = await self._first_observed(grant.task, trips)
        killed_now = False
        if trips and grant.policy.on_trip == "kill" and view.killed is None:
            trips = [one_kill(trips)]
            killed_now = await self.kill(grant.task, trips[0])
            view.killed = trips[0] if killed_now else view.killed
        return Settled(view, trips, killed_now)

    async def _first_observed(self, task: str, trips: builtins.list[Trip]) -> builtins.list[Trip]:
        state = self._keys(task).state
        try:
            return [
                trip for trip in trips if await self.client.hsetnx(state, f"obs|{trip.reason}", 1)
            ]
        except _UNREACHABLE as error:
            self._unreachable("settle", error)
            return trips

    async def kill(self, task: str, trip: Trip) -> bool:
        keys = self._keys(task)
        record = trip.to_json()
        message = json.dumps({"task": task, "trip": json.loads(record)})
        self.board.cut(task, trip)
        try:
            done = await self._kill(
                keys=[keys.state, keys.timeline, keys.agents],
                args=[
                    record,
                    self._retention,
                    self.channel,
                    message,
                    _timeline_entry("kill", trip.detail),
                    self._now(),
                ],
            )
        except _UNREACHABLE as error:
            self._unreachable("kill", error)
            self._pend_kill(task, trip)
            return await self._fallback.kill(task, trip)
        if done:  # known here at once, not only when the channel's message comes back
            self._remember(task, killed=trip)
        return bool(done)

    # -- sessions of untagged traffic -------------------------------------------------------

    def _session_key(self, base: str) -> str:
        return f"{self.settings.key_prefix}:session:{{{key_part(base)}}}"

    async def open_session(self, base: str, idle_gap: float) -> Span:
        ttl_ms = int((idle_gap + sessions.RECORD_MARGIN_S) * 1000)
        try:
            start, ends = await self._open_session(
                keys=[self._session_key(base)], args=[self._now(), repr(idle_gap), ttl_ms]
            )
        except _UNREACHABLE as error:
            self._unreachable("session", error)
            if self.settings.on_state_error == "open":
                return await self._fallback.open_session(base, idle_gap)
            raise StateUnavailable(
                "Tripwire cannot reach its state store (Redis), so it cannot tell this "
                "client's session; calls are refused until Redis answers again."
            ) from error
        return Span(int(start), float(ends) if ends else None)

    async def end_session(self, base: str, start: int, cooldown: float) -> float | None:
        try:
            ends = await self._end_session(
                keys=[self._session_key(base)], args=[start, self._now(), repr(cooldown)]
            )
        except _UNREACHABLE as error:
            self._unreachable("session", error)
            return await self._fallback.end_session(base, start, cooldown)
        return float(ends) if ends else None

    async def get(self, task: str) -> TaskView | None:
        keys = self._keys(task)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.state)
            pipe.hkeys(keys.agents)
            pipe.lrange(keys.previews, 0, -1)
            pipe.lrange(keys.timeline, 0, -1)
            state, agents, previews, timeline = await pipe.execute()
        if not state:
            return None
        view = self._view(task, state, sorted({a.rsplit("|", 1)[0] for a in agents}))
        view.previews = [Preview(**json.loads(p)) for p in reversed(previews)]
        view.timeline = [_timeline_event(entry) for entry in reversed(timeline)]
        return view

    async def list(self, tenant: str | None = None) -> builtins.list[TaskView]:
        """Every task's summary (no previews, no timeline), read a batch of tasks per round
        trip: a fleet of ten thousand tasks is listed in tens of round trips, not thousands.
        With ``tenant``, only that tenant's tasks are read, from its index."""
        if tenant is not None:
            return await self._tenant_list(tenant)
        views: builtins.list[TaskView] = []
        pattern = f"{self.settings.key_prefix}:{{*}}:s"
        batch: builtins.list[str] = []
        async for key in self.client.scan_iter(match=pattern, count=LIST_BATCH):
            inner = key[len(self.settings.key_prefix) + 2 : -3]
            if "}" in inner:  # another key of a task that ends in ":s" (an agent's window)
                continue
            batch.append(unquote(inner))
            if len(batch) >= LIST_BATCH:
                views += await self._summaries(batch)
                batch = []
        if batch:
            views += await self._summaries(batch)
        return views

    async def _tenant_list(self, tenant: str) -> builtins.list[TaskView]:
        key = self._tenant_key(tenant)
        names = sorted(await self.client.smembers(key))
        views: builtins.list[TaskView] = []
        for start in range(0, len(names), LIST_BATCH):
            views += await self._summaries(names[start : start + LIST_BATCH])
        found = {view.task for view in views}
        if gone := [name for name in names if name not in found]:
            await self.client.srem(key, *gone)  # expired since they were listed
        return [view for view in views if view.tenant == tenant]

    async def _summaries(self, tasks: builtins.list[str]) -> builtins.list[TaskView]:
        async with self.client.pipeline(transaction=False) as pipe:
            for task in tasks:
                keys = self._keys(task)
                pipe.hgetall(keys.state)
                pipe.hkeys(keys.agents)
            replies = await pipe.execute()
        return [
            self._view(task, state, sorted({a.rsplit("|", 1)[0] for a in agents}))
            for task, state, agents in zip(tasks, replies[::2], replies[1::2], strict=True)
            if state
        ]

    async def observe_content(
        self,
        task: str,
        agent: str,
        text: str,
        policy: Effective,
        tool_calls: Sequence[tuple[str, str]] = (),
        tool_results: Sequence[str] = (),
    ) -> builtins.list[tuple[Trip, str]]:
        """Run the content detectors on one completion. A task's completions are taken one
        batch at a time per replica (``KeyedBatches``): read the state once, run the detectors
        on each completion in order, write it back once unless another replica wrote it in
        between (then read again and redo the batch, so no completion is missed)."""
        keys = self._keys(task)
        try:
            trips = await self._content.submit(
                task, _Completion(agent, text, policy, tool_calls, tool_results)
            )
        except _UNREACHABLE as error:
            # Detection is a heuristic over a window: a completion Redis cannot take is skipped.
            self._unreachable("observe_content", error)
            return []
        reported: builtins.list[tuple[Trip, str]] = []
        for trip in trips:
            action = policy.action_for(trip.reason)
            if action == "kill":
                if await self.kill(task, trip):
                    reported.append((trip, action))
            elif await self.client.hsetnx(keys.state, f"obs|{trip.reason}", 1):
                reported.append((trip, action))
        return reported

    async def _swap_content(
        self, task: str, batch: Sequence[_Completion]
    ) -> builtins.list[builtins.list[Trip]]:
        """The batch's detectors run on the state this replica holds (``KnownStates``), and the
        result is written back in one step unless the task's state moved on meanwhile; then
        the reply carries the current state and the batch runs again on it."""
        keys = self._keys(task)
        version, state = self._states.take(task)
        ttl = int(self.settings.task_ttl)
        for _ in range(CONTENT_SWAP_ATTEMPTS):
            found: builtins.list[builtins.list[Trip]] = [[] for _ in batch]
            updated = state
            for index, done in enumerate(batch):
                updated, trips = observe_content(
                    updated,
                    done.agent,
                    done.text,
                    cycle=done.policy.cycle,
                    near_duplicate=done.policy.near_duplicate,
                    no_progress=done.policy.no_progress,
                    tool_loop=done.policy.tool_loop,
                    tool_calls=done.tool_calls,
                    tool_results=done.tool_results,
                )
                self.detector_runs += 1
                found[index] = trips
                if any(done.policy.action_for(trip.reason) == "kill" for trip in trips):
                    break  # the task is killed: later completions are not looked at
            encoded = encode(updated)
            # Where a detector may kill, the task's next call waits for this verdict, so the
            # write goes at once; otherwise no one waits on it (the state only feeds the
            # detectors' next run) and it may go out with the next call's.
            deciding = any(done.policy.content_may_kill for done in batch)
            reply = await self._content_swap(
                keys=[keys.state], args=[version, encoded, ttl], deferrable=not deciding
            )
            if reply[0] == "ok":
                self._states.wrote(task, reply[1], updated)
                return found
            if reply[0] == "killed":
                self._states.forget(task)
                return [[] for _ in batch]
            version, state = reply[1], decode(reply[2])
        self._states.forget(task)
        event("content_state_contended", logging.WARNING, task=keys.task)
        return [[] for _ in batch]

    async def count_envelope(self, task: str, status: str) -> None:
        keys = self._keys(task)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.state, f"env|{status}", 1)
            self._keep_alive(pipe, keys.state)
            await pipe.execute()

    async def create(
        self, task: str, *, tenant: str | None, owner: str | None, overrides: dict[str, float]
    ) -> TaskView:
        keys = self._keys(task)
        fields: dict[str, Any] = {f"lim|{k}": repr(float(v)) for k, v in overrides.items()}
        if tenant is not None:
            fields["tenant"] = tenant
            await self._index(tenant, task)
        if owner is not None:
            fields["owner"] = owner
        now = time.time()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.state, mapping={"last_seen": repr(now), **fields})
            self._push_timeline(pipe, keys, "created", _describe(overrides))
            self._keep_alive(pipe, keys.state)
            await pipe.execute()
        view = await self.get(task)
        assert view is not None
        return view

    async def resume(self, task: str, overrides: dict[str, float], note: str) -> TaskView | None:
        keys = self._keys(task)
        state = await self.client.hkeys(keys.state)
        if not state:
            return None
        observed = [field for field in state if field.startswith("obs|")]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.state, "killed", *observed)
            if overrides:
                pipe.hset(
                    keys.state, mapping={f"lim|{k}": repr(float(v)) for k, v in overrides.items()}
                )
            self._push_timeline(pipe, keys, "resume", f"{note} {_describe(overrides)}".strip())
            await pipe.execute()
        self._forget_known_kill(task)
        return await self.get(task)

    async def extend(self, task: str, seconds: float, note: str) -> TaskView | None:
        keys = self._keys(task)
        if not await self.client.exists(keys.state):
            return None
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrbyfloat(keys.state, "extra_duration", seconds)
            self._push_timeline(
                pipe, keys, "extend", f"deadline moved {seconds:.0f}s later {note}".strip()
            )
            await pipe.execute()
        return await self.get(task)

    # -- the task's deadline -----------------------------------------------------------------

    async def deadline(self, task: str, policy_limit: float | None) -> tuple[float, float] | None:
        started, limit, extra = await self.client.hmget(
            self._keys(task).state, ["started", "lim|max_duration", "extra_duration"]
        )
        if started is None:
            return None
        overrides = {} if limit is None else {"max_duration": _num(limit)}
        allowed = allowed_seconds(overrides, _num(extra), policy_limit)
        return None if allowed is None else (_num(started), allowed)

    def _push_timeline(self, pipe: Any, keys: Keys, kind: str, detail: str) -> None:
        pipe.lpush(keys.timeline, _timeline_entry(kind, detail))
        pipe.ltrim(keys.timeline, 0, TIMELINE_PER_TASK - 1)
        self._keep_alive(pipe, keys.timeline)

    def _keep_alive(self, pipe: Any, key: str) -> None:
        """The task TTL on a key that has none, or longer than it has: never shorter, so a
        killed task's keys keep the kill's retention."""
        ttl = int(self.settings.task_ttl)
        pipe.expire(key, ttl, nx=True)
        pipe.expire(key, ttl, gt=True)

    @staticmethod
    def _view(task: str, state: dict[str, str], agents: builtins.list[str]) -> TaskView:
        max_tokens = int(_num(state.get("lim|max_tokens") or state.get("max_tokens"), -1))
        killed = state.get("killed")
        overrides = {
            name[4:]: _num(value) for name, value in state.items() if name.startswith("lim|")
        }
        return TaskView(
            task=task,
            started=_num(state.get("started")),
            last_seen=_num(state.get("last_seen")),
            tokens_used=int(_num(state.get("used"))),
            tokens_reserved=max(int(_num(state.get("reserved"))), 0),
            cost_usd=_num(state.get("cost")),
            calls=int(_num(state.get("calls"))),
            hops=int(_num(state.get("hops"))),
            agents=agents,
            killed=Trip.from_json(killed) if killed else None,
            max_tokens=max_tokens if max_tokens >= 0 else None,
            tenant=state.get("tenant"),
            owner=state.get("owner"),
            overrides=overrides,
            extra_duration=_num(state.get("extra_duration")),
            envelopes={
                name[4:]: int(_num(value))
                for name, value in state.items()
                if name.startswith("env|")
            },
        )

    # -- kills from other replicas, and write-back -----------------------------------------

    async def _listen_for_kills(self) -> None:
        backoff = 0.1
        while True:
            client = build_client(self.settings, for_pubsub=True)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._recheck_in_flight()
                backoff = 0.1
                async for message in pubsub.listen():
                    self._on_kill_message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except _UNREACHABLE as error:
                self._unreachable("subscribe", error)
            finally:
                with contextlib.suppress(*_UNREACHABLE):
                    async with asyncio.timeout(self.settings.redis_timeout):
                        await pubsub.aclose()
                with contextlib.suppress(*_UNREACHABLE):
                    async with asyncio.timeout(self.settings.redis_timeout):
                        await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_kill_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            trip = Trip.from_json(json.dumps(message["trip"]))
            task = str(message["task"])
        except (TypeError, ValueError, KeyError):
            return
        self.board.cut(task, trip)
        self._remember(task, killed=trip)

    # -- open mode: what this replica last knew ----------------------------------------------

    def _remember(
        self,
        task: str,
        used: int | None = None,
        cost: float | None = None,
        killed: Trip | None = None,
        *,
        calls: int | None = None,
        started: float | None = None,
    ) -> None:
        """Each task's last figures and kill as Redis told them, bounded (least recently
        told out first): while Redis is away, open mode starts a task from them, so a killed
        task stays killed, a spent budget stays spent, and its calls and deadline count on."""
        known = self._known.get(task)
        if known is None:
            known = self._known[task] = _Known()
            if len(self._known) > MAX_KNOWN:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(task)
        if used is not None:
            known.used = used
        if cost is not None:
            known.cost = cost
        if killed is not None:
            known.killed = killed
        if calls is not None:
            known.calls = calls
        if started is not None:
            known.started = started

    def _forget_known_kill(self, task: str) -> None:
        known = self._known.get(task)
        if known is not None:
            known.killed = None
        self._kills_pending.pop(task, None)

    async def _reserve_locally(self, plan: CallPlan) -> Grant:
        known = self._known.get(plan.task)
        if known is not None:
            self._fallback.seed(
                plan.task, known.used, known.cost, known.killed, known.calls, known.started
            )
        try:
            return await self._fallback.reserve(plan)
        except Denied as denied:
            if denied.fresh:
                self._pend_kill(plan.task, denied.trip)
            raise

    def _pend_kill(self, task: str, trip: Trip) -> None:
        """A kill decided in memory: written to Redis (and published) when it answers."""
        self._remember(task, killed=trip)
        self._kills_pending.setdefault(task, trip)
        if len(self._kills_pending) > MAX_KNOWN:
            self._kills_pending.popitem(last=False)

    async def _write_kill(self, task: str, trip: Trip) -> None:
        keys = self._keys(task)
        record = trip.to_json()
        await self._kill(
            keys=[keys.state, keys.timeline, keys.agents],
            args=[
                record,
                self._retention,
                self.channel,
                json.dumps({"task": task, "trip": json.loads(record)}),
                _timeline_entry("kill", trip.detail),
                self._now(),
            ],
        )

    async def _recheck_in_flight(self) -> None:
        """Kills published while this replica was not listening still cut its streams; a
        task with a stream in flight is kept from expiring meanwhile."""
        for task in self.board.tasks():
            keys = self._keys(task)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hget(keys.state, "killed")
                for key in (keys.state, keys.agents, keys.reservations):
                    pipe.expire(key, int(self.settings.task_ttl), gt=True)
                killed, *_ = await pipe.execute()
            if killed:
                self.board.cut(task, Trip.from_json(killed))

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_INTERVAL_S)
            try:
                await self._recheck_in_flight()
                await self._flush_pending()
            except _UNREACHABLE as error:
                self._unreachable("maintain", error)
            except Exception as error:  # this loop must outlive any one failure
                event("state_maintenance_failed", logging.ERROR, error=repr(error))

    def _pend(self, pending: _Pending) -> None:
        if len(self._pending) == self._pending.maxlen:
            event("state_writeback_dropped", logging.ERROR, task=self._pending[0].task)
        self._pending.append(pending)

    async def _flush_pending(self) -> None:
        while self._kills_pending:
            task, trip = next(iter(self._kills_pending.items()))
            await self._write_kill(task, trip)
            self._kills_pending.pop(task, None)
        while self._pending:
            item = self._pending[0]
            await self._run_settle(
                item.task, item.agent, item.member, item.tokens, item.cost, calls=item.calls
            )
            self._pending.popleft()
            if not self.reachable:
                self.reachable = True
                event("state_reachable", backend="redis")
