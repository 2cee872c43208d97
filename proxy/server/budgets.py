"""Which calls need their prompt estimated before they are reserved: those a token or dollar
budget applies to, from the policy (a token's signed limits included) or from the task's own
limits set through the admin API. The rest are booked by the provider's usage, and the
tokenizer is not even loaded for them.

A task's own limits live in the ledger. The embedded ledger changes them only through this
process's admin API, which tells ``TaskBudgets`` first, and its saved state, read at
start-up; so this process knows every task with a budget of its own. A shared ledger (Redis)
is changed by every replica: there, every modelled call is estimated, as a budget another
replica set may apply to any task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.session.base import Ledger

# Limits that bound a call's cost: the ones the prompt estimate is reserved against.
BUDGET_LIMITS = frozenset({"max_tokens", "max_tokens_per_agent", "max_cost_usd"})
# Past this many tasks with budgets of their own, every call is estimated: the set stays
# bounded, and a task it could not hold is never reserved without its estimate.
MAX_TRACKED = 100_000


class TaskBudgets:
    __slots__ = ("_tasks", "complete")

    def __init__(self, complete: bool) -> None:
        """``complete``: every task's own limits are told here (the embedded ledger)."""
        self.complete = complete
        self._tasks: set[str] = set()

    def note(self, task: str, limits: Mapping[str, float] | Iterable[str]) -> None:
        """The task has these limits of its own (or their names) from now on."""
        if not self.complete or BUDGET_LIMITS.isdisjoint(limits):
            return
        self._tasks.add(task)
        if len(self._tasks) > MAX_TRACKED:
            self.complete = False
            self._tasks.clear()

    async def read(self, ledger: Ledger) -> None:
        """The limits of their own that tasks kept from before a restart (the embedded
        ledger's saved state)."""
        if self.complete:
            for view in await ledger.list():
                self.note(view.task, view.overrides)

    def any_own(self) -> bool:
        """Whether any task may have a token or dollar budget of its own."""
        return not self.complete or bool(self._tasks)

    def may_apply(self, task: str) -> bool:
        """Whether the task may have a token or dollar budget of its own."""
        return not self.complete or task in self._tasks
