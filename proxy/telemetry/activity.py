"""Recent activity per task, for the console: the last calls, minute totals over the last hour,
and the calls refused because the task was killed.

Fed by a call listener (every call, forwarded or refused, once it is over), held in memory by
each replica and bounded: the last ``calls_per_task`` calls and 60 minutes of ``max_tasks``
tasks, the least recently active task forgotten first. A task's calls and minutes are short
lists trimmed at their bounds, not deques: most tasks make a few calls, and a deque starts at a
block of 64 slots (over a kilobyte for the two), which thousands of tasks would hold for
nothing. A task gets an entry with its first call
forwarded through this replica: calls refused before then count in the hour's totals only. With
several replicas each one answers for the calls it served; the ledger's totals stay the shared
truth.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.telemetry.record import CallRecord

WINDOW_MINUTES = 60
REFUSED = "refused"  # the outcome of a call refused because its task is killed


@dataclass(frozen=True, slots=True)
class CallSeen:
    at: float
    agent: str
    model: str
    outcome: str
    status: int
    tokens: int
    cost_usd: float


@dataclass(slots=True)
class Minute:
    start: float
    calls: int = 0
    refused: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class _Task:
    calls: list[CallSeen] = field(default_factory=list)  # oldest first
    minutes: list[Minute] = field(default_factory=list)  # oldest first
    refused: int = 0
    forwarded: int = 0


class Activity:
    def __init__(
        self,
        max_tasks: int = 5000,
        calls_per_task: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_tasks = max_tasks
        self.calls_per_task = calls_per_task
        self.clock = clock
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        # Calls refused before this replica forwarded any of their task's: in the hour's
        # totals, but no task's entry (nor calls kept), so refused calls of made-up ids push
        # no task out.
        self._untracked = _Task()

    def record(self, record: CallRecord) -> None:
        now = self.clock()
        task = self._tasks.get(record.task)
        if task is None and not record.forwarded:
            task = self._untracked
        elif task is None:
            task = self._tasks[record.task] = _Task()
            if len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(record.task)
        tokens = record.input_tokens + record.output_tokens
        if task is not self._untracked:
            calls = task.calls
            calls.append(
                CallSeen(
                    now,
                    record.agent,
                    record.model,
                    record.outcome,
                    record.status,
                    tokens,
                    record.cost_usd,
                )
            )
            if len(calls) > self.calls_per_task:
                del calls[0]
        start = now - now % 60
        minutes = task.minutes
        if not minutes or minutes[-1].start != start:
            minutes.append(Minute(start))
            if len(minutes) > WINDOW_MINUTES:
                del minutes[0]
        minute = minutes[-1]
        if record.forwarded:
            task.forwarded += 1
            minute.calls += 1
            minute.tokens += tokens
            minute.cost_usd += record.cost_usd
        elif record.outcome == REFUSED:
            task.refused += 1
            minute.refused += 1

    def calls(self, task: str) -> list[CallSeen]:
        """The task's last calls through this replica, oldest first."""
        found = self._tasks.get(task)
        return list(found.calls) if found is not None else []

    def refused(self, task: str) -> int:
        """Calls of the task this replica refused because the task was killed."""
        found = self._tasks.get(task)
        return found.refused if found is not None else 0

    def hour(self, tasks: Iterable[str] | None = None) -> list[Minute]:
        """Minute totals of the last hour, oldest first, over ``tasks`` (None: every task)."""
        now = self.clock()
        first = now - now % 60 - (WINDOW_MINUTES - 1) * 60
        totals = [Minute(first + i * 60) for i in range(WINDOW_MINUTES)]
        chosen = (
            (*self._tasks.values(), self._untracked)
            if tasks is None
            else (self._tasks[t] for t in tasks if t in self._tasks)
        )
        for task in chosen:
            for minute in task.minutes:
                index = int((minute.start - first) // 60)
                if 0 <= index < WINDOW_MINUTES:
                    total = totals[index]
                    total.calls += minute.calls
                    total.refused += minute.refused
                    total.tokens += minute.tokens
                    total.cost_usd += minute.cost_usd
        return totals
