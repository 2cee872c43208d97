"""Every Prometheus metric Tripwire exports, in one place, each name a constant.

Labels are bounded: upstream (from config), model and agent (the first ``max_models`` /
``max_agents`` seen keep their name, later ones fold into ``other``), reason, action, outcome.
Task ids are never a label, except on ``tripwire_top_task_spend_usd``, bounded to the ten
tasks that spent most. They travel as exemplars (OpenMetrics) on the trip, token and cost
counters, so a dashboard can jump from a spike to the task. A tenant's task ids (``tenant/task``)
are left out of both unless ``task_ids`` says "all": the exemplar names the tenant instead, and
the gauge lists only tasks whose ids may be shown.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.config import FAULTS
from proxy.detectors.base import TripReason
from proxy.telemetry.logs import dropped_lines
from proxy.telemetry.series import Count, SeriesCollector, Spread

# How old a series' exemplar may get before a call of the same task sets it again.
EXEMPLAR_REFRESH_S = 1.0

CALLS = "tripwire_calls"
TOKENS = "tripwire_tokens"
COST = "tripwire_cost_usd"
TRIPS = "tripwire_trips"
REFUSED = "tripwire_refused_calls"
STREAMS_CUT = "tripwire_streams_cut"
FAULTS_INJECTED = "tripwire_faults_injected"
STATE_ERRORS = "tripwire_state_backend_errors"
ADDON_FAILURES = "tripwire_addon_failures"
ACTIVE_TASKS = "tripwire_active_tasks"
TASK_TOKENS = "tripwire_task_tokens"
TASK_HOPS = "tripwire_task_hops"
TASK_CALLS = "tripwire_task_calls"
UPSTREAM_LATENCY = "tripwire_upstream_latency_seconds"
UPSTREAM_TTFB = "tripwire_upstream_ttfb_seconds"
OVERHEAD = "tripwire_overhead_seconds"
TOP_TASK_SPEND = "tripwire_top_task_spend_usd"
STATE_UP = "tripwire_state_backend_up"
STATE_LATENCY = "tripwire_state_backend_seconds"
DETECTOR_RUNS = "tripwire_detector_runs"
ENVELOPES = "tripwire_envelopes"
ENVELOPE_CONFIDENCE = "tripwire_envelope_confidence"
ENVELOPES_BLOCKED = "tripwire_envelopes_blocked"
OTEL_SPANS_DROPPED = "tripwire_otel_spans_dropped"
TELEMETRY_DROPPED = "tripwire_telemetry_dropped"
LOG_LINES_DROPPED = "tripwire_log_lines_dropped"
ENVELOPE_STATUSES = ("success", "failed", "partial", "invalid")
TRIP_ACTIONS = ("kill", "observe")
INFO = "tripwire_build_info"

OTHER = "other"
TOP_TASKS = 10

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# A state backend step: a round trip to Redis and its script, well under a millisecond on a
# local network, up to the step's timeout when Redis is in trouble.
_STATE_BUCKETS = (
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    0.5,
    2.5,
)
_TOKEN_BUCKETS = (100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000)
_COUNT_BUCKETS = (1, 2, 3, 5, 8, 12, 20, 50, 100, 200, 500, 1000)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def _no_runs() -> int:
    return 0


def _always_up() -> bool:
    return True


def _nothing(label: str) -> None:
    """No series to prepare for a new label value."""


class _Capped:
    """The first ``limit`` values keep their name as a label value; later ones are ``other``.

    ``admitted`` hears of each label value the first time it is handed out, ``other``
    included, so series keyed on it can be created before they are needed.
    """

    def __init__(self, limit: int, admitted: Callable[[str], None] = _nothing) -> None:
        self.limit = limit
        self.known: set[str] = set()
        self.admitted = admitted
        self.folded = False

    def __call__(self, value: str) -> str:
        if value in self.known:
            return value
        if len(self.known) < self.limit:
            self.known.add(value)
            self.admitted(value)
            return value
        if not self.folded:
            self.folded = True
            if OTHER not in self.known:
                self.admitted(OTHER)
        return OTHER


@dataclass(frozen=True, slots=True)
class _UsageSeries:
    prompt: Count
    completion: Count
    cached: Count
    cost: Count


@dataclass(slots=True)
class _TaskFigures:
    last_seen: float
    tokens: int
    calls: int
    hops: int
    cost: float


class _TaskCollector(Collector):
    """Active tasks and the top spenders, computed at scrape time from a bounded table."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        self.metrics.expire_tasks(time.time())
        tasks = self.metrics.tasks
        active = GaugeMetricFamily(
            ACTIVE_TASKS, "Tasks with a call through this replica in the active window."
        )
        active.add_metric([], len(tasks))
        yield active
        top = GaugeMetricFamily(
            TOP_TASK_SPEND,
            "Spend of the tasks that spent most, bounded to the top ten.",
            labels=["task"],
        )
        shown = self.metrics.shown
        spenders = ((name, f) for name, f in tasks.items() if shown(name))
        for name, figures in heapq.nlargest(TOP_TASKS, spenders, key=lambda i: i[1].cost):
            top.add_metric([name], figures.cost)
        yield top
        up = GaugeMetricFamily(STATE_UP, "1 when the state backend answers.", labels=["backend"])
        up.add_metric([self.metrics.backend], 1.0 if self.metrics.state_up() else 0.0)
        yield up
        runs = CounterMetricFamily(
            DETECTOR_RUNS,
            "Runs of the content detectors over a completion, on this replica (a run redone "
            "after another replica updated the task's detector state counts again).",
        )
        runs.add_metric([], self.metrics.detector_runs())
        yield runs
        dropped = CounterMetricFamily(
            LOG_LINES_DROPPED,
            "Log lines dropped because the log's output (stderr) did not take them as fast as "
            "they came.",
        )
        dropped.add_metric([], dropped_lines())
        yield dropped


class Metrics:
    def __init__(
        self,
        backend: str = "memory",
        max_models: int = 50,
        max_agents: int = 50,
        active_window_s: float = 300.0,
        max_tracked_tasks: int = 100_000,
        task_ids: str = "untenanted",
    ) -> None:
        self.task_ids = task_ids
        self.registry = CollectorRegistry()
        self.backend = backend
        self.model = _Capped(max_models)
        self.agent = _Capped(max_agents, self._agent_admitted)
        self.active_window_s = active_window_s
        self.max_tracked_tasks = max_tracked_tasks
        self.tasks: OrderedDict[str, _TaskFigures] = OrderedDict()
        self.state_up: Callable[[], bool] = _always_up
        self.detector_runs: Callable[[], int] = _no_runs
        # Bounded by the label caps: every label value here comes from a capped set.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Per series with exemplars: the task of its last exemplar, and when it was set.
        self._exemplar_set: dict[int, tuple[str, float]] = {}
        r = self.registry
        # What every forwarded call moves: plain numbers, exposed at scrape time (series.py).
        per_call = SeriesCollector()
        r.register(per_call)
        self.calls = per_call.counter(
            CALLS, "Calls through the proxy, by outcome.", ["upstream", "model", "agent", "outcome"]
        )
        self.tokens = per_call.counter(
            TOKENS,
            "Tokens the providers reported, by direction.",
            ["upstream", "model", "agent", "direction"],
        )
        self.cost = per_call.counter(
            COST, "Dollars spent, from provider-reported usage.", ["upstream", "model", "agent"]
        )
        self.trips = Counter(
            TRIPS,
            "Detector trips, by reason, action (kill or observe) and the agent that tripped.",
            ["reason", "action", "agent"],
            registry=r,
        )
        self.refused = Counter(
            REFUSED, "Calls refused without reaching the provider.", ["reason"], registry=r
        )
        self.streams_cut = Counter(
            STREAMS_CUT, "Streams ended by Tripwire mid-flight.", ["reason"], registry=r
        )
        self.faults_injected = Counter(
            FAULTS_INJECTED,
            "Provider failures injected by chaos rules, never forwarded.",
            ["fault"],
            registry=r,
        )
        self.state_errors = Counter(
            STATE_ERRORS,
            "Errors talking to the state backend.",
            ["backend", "operation"],
            registry=r,
        )
        self.addon_failures = Counter(
            ADDON_FAILURES,
            "Exceptions in an addon's observer hook, logged and contained.",
            ["addon", "hook"],
            registry=r,
        )
        self.otel_spans_dropped = Counter(
            OTEL_SPANS_DROPPED,
            "Trace spans that never reached the OTLP collector: export_failed (it did not take "
            "them) or queue_full (the export queue was full).",
            ["reason"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            TELEMETRY_DROPPED,
            "Calls whose metrics and log line were dropped: more calls ended in one turn of the "
            "event loop than its telemetry queue holds.",
            registry=r,
        )
        self.task_tokens = Histogram(
            TASK_TOKENS,
            "Tokens per task, observed at task end.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.task_hops = Histogram(
            TASK_HOPS, "Agent hand-offs per task, at task end.", buckets=_COUNT_BUCKETS, registry=r
        )
        self.task_calls = Histogram(
            TASK_CALLS, "Calls per task, at task end.", buckets=_COUNT_BUCKETS, registry=r
        )
        self.upstream_latency = per_call.histogram(
            UPSTREAM_LATENCY,
            "Time from sending a call upstream to its last byte.",
            ["upstream", "model"],
            buckets=_LATENCY_BUCKETS,
        )
        self.upstream_ttfb = per_call.histogram(
            UPSTREAM_TTFB,
            "Time from sending a call upstream to its response headers.",
            ["upstream", "model"],
            buckets=_LATENCY_BUCKETS,
        )
        self.overhead = per_call.histogram(
            OVERHEAD,
            "Time spent in Tripwire itself per call, provider time excluded.",
            buckets=_OVERHEAD_BUCKETS,
        )
        self._overhead = self.overhead.child()
        self.state_latency = per_call.histogram(
            STATE_LATENCY,
            "Time a call waited on one step of the state backend (a Redis script: its round "
            "trip and its run, a retry included), by operation.",
            ["backend", "operation"],
            buckets=_STATE_BUCKETS,
        )
        # Per label set (bounded by the label caps), its series of each per-call family.
        self._call_series: dict[tuple[str, str, str, str], Count] = {}
        self._usage_series: dict[tuple[str, str, str], _UsageSeries] = {}
        self._timing_series: dict[tuple[str, str], tuple[Spread, Spread]] = {}
        self.envelopes = Counter(
            ENVELOPES,
            "Status envelopes of workers' answers, by status (invalid: not an envelope).",
            ["agent", "status"],
            registry=r,
        )
        self.envelope_confidence = Histogram(
            ENVELOPE_CONFIDENCE,
            "Confidence the workers' valid envelopes reported.",
            ["agent"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.envelopes_blocked = Counter(
            ENVELOPES_BLOCKED,
            "Workers' answers held back for a confidence under the threshold.",
            ["agent"],
            registry=r,
        )
        Gauge(INFO, "Tripwire build information.", ["version"], registry=r).labels(__version__).set(
            1
        )
        r.register(_TaskCollector(self))
        # Refusal and cut series exist from the start at 0, so the first one after a restart is
        # an increase Prometheus can see, not a series appearing out of nowhere. Trip series
        # do the same per agent, from the agent's first appearance (_agent_admitted).
        for reason in TripReason:
            self.refused.labels(str(reason))
            self.streams_cut.labels(str(reason))
        for other in ("budget_busy", "state_unavailable"):
            self.refused.labels(other)
        for fault in FAULTS:
            self.faults_injected.labels(fault)

    # -- per call ---------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(...)``, looked up once per label set: it is costly on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def shown(self, task: str) -> bool:
        """May this task's id appear in a scrape? Only Tripwire puts a "/" in a task key, between
        a tenant and its task."""
        if self.task_ids == "all":
            return True
        return self.task_ids == "untenanted" and "/" not in task

    def exemplar(self, task: str) -> dict[str, str] | None:
        # Cut to 64 characters: an exemplar's labels may hold 128 in all (OpenMetrics).
        if self.shown(task):
            return {"task_id": task[:64]}
        tenant, slash, _ = task.partition("/")
        return {"tenant": tenant[:64]} if slash else None

    def call(self, upstream: str, model: str, agent: str, outcome: str) -> None:
        # Keyed by the label values, not the names a client sent: as bounded as the series.
        key = (upstream, self.model(model or "unknown"), self.agent(agent), outcome)
        series = self._call_series.get(key)
        if series is None:
            series = self._call_series[key] = self.calls.child(key)
        series.value += 1

    def usage(
        self,
        upstream: str,
        model: str,
        agent: str,
        task: str,
        prompt: int,
        completion: int,
        cached: int,
        cost: float,
    ) -> None:
        key = (upstream, self.model(model or "unknown"), self.agent(agent))
        series = self._usage_series.get(key)
        if series is None:
            series = self._usage_series[key] = self._usage_of(key)
        now = time.monotonic()
        for child, count in (
            (series.prompt, prompt),
            (series.completion, completion),
            (series.cached, cached),
            (series.cost, cost),
        ):
            if count:
                child.inc(count, self._exemplar_of(child, task, now))

    def _usage_of(self, labels: tuple[str, str, str]) -> _UsageSeries:
        tokens = self.tokens.child
        return _UsageSeries(
            tokens((*labels, "prompt")),
            tokens((*labels, "completion")),
            tokens((*labels, "cached")),
            self.cost.child(labels),
        )

    def _exemplar_of(self, child: Count, task: str, now: float) -> dict[str, str] | None:
        """The exemplar to set with this increment: none while the series' last one names
        the same task and is under a second old. A series shows one exemplar, the last, and a
        scrape reads it every few seconds at most, so setting it on every call of a busy task
        bought nothing."""
        key = id(child)
        last = self._exemplar_set.get(key)
        if last is not None and last[0] == task and now - last[1] < EXEMPLAR_REFRESH_S:
            return None
        self._exemplar_set[key] = (task, now)
        return self.exemplar(task)

    def timings(
        self, upstream: str, model: str, latency: float, ttfb: float, overhead: float
    ) -> None:
        key = (upstream, self.model(model or "unknown"))
        series = self._timing_series.get(key)
        if series is None:
            series = self._timing_series[key] = (
                self.upstream_latency.child(key),
                self.upstream_ttfb.child(key),
            )
        series[0].observe(latency)
        series[1].observe(ttfb)
        self._overhead.observe(overhead)

    def envelope(self, agent: str, status: str, confidence: float | None) -> None:
        agent = self.agent(agent)
        self._child(self.envelopes, agent, status).inc()
        if confidence is not None:
            self._child(self.envelope_confidence, agent).observe(confidence)

    def envelope_blocked(self, agent: str) -> None:
        self._child(self.envelopes_blocked, self.agent(agent)).inc()

    def trip(self, reason: str, action: str, agent: str, task: str) -> None:
        self._child(self.trips, reason, action, self.agent(agent)).inc(1, self.exemplar(task))

    def _agent_admitted(self, agent: str) -> None:
        """Every trip series of a new agent label starts at 0: a series born at 1 is no
        increase() to Prometheus, so the agent's first trip would escape the rate alerts.
        At most (max_agents + 1) x reasons x 2 series, and only for agents that appear."""
        for reason in TripReason:
            for action in TRIP_ACTIONS:
                self._child(self.trips, str(reason), action, agent)

    # -- per task ---------------------------------------------------------------------------

    def task_seen(self, task: str, tokens: int, calls: int, hops: int, cost: float) -> None:
        now = time.time()
        # Idle tasks end here too, not only at a scrape: their histograms must not wait for one.
        # The table is in last-seen order, so this looks at the oldest entry only.
        self.expire_tasks(now)
        figures = self.tasks.get(task)
        if figures is None:
            self.tasks[task] = _TaskFigures(now, tokens, calls, hops, cost)
            if len(self.tasks) > self.max_tracked_tasks:
                self._end(*self.tasks.popitem(last=False))
        else:
            figures.last_seen, figures.tokens, figures.calls = now, tokens, calls
            figures.hops, figures.cost = hops, cost
            self.tasks.move_to_end(task)

    def task_ended(self, task: str) -> None:
        """A killed task ends now rather than when it goes idle."""
        figures = self.tasks.pop(task, None)
        if figures is not None:
            self._end(task, figures)

    def expire_tasks(self, now: float) -> None:
        horizon = now - self.active_window_s
        while self.tasks:
            name, figures = next(iter(self.tasks.items()))
            if figures.last_seen > horizon:
                break
            self.tasks.popitem(last=False)
            self._end(name, figures)

    def _end(self, task: str, figures: _TaskFigures) -> None:
        self.task_tokens.observe(figures.tokens)
        self.task_hops.observe(figures.hops)
        self.task_calls.observe(figures.calls)
