"""Which calls need their prompt estimated before they are reserved: those a token or dollar
budget applies to, from the policy (a token's signed limits included) or from the task's own
limits set through the admin API. The rest are booked by the provider's usage, and the
tokenizer is not even loaded for them.

A task's own limits live in the ledger. The embedded ledger changes them only through this
process's admin API, which tells ``TaskBudgets`` first, and its saved state, read at
start-up; so this process knows every task with a budget of its own. A shared ledger (Redis)
is changed by every replica: there, a call sent without its estimate of a task with a budget
of its own is refused by the reserve itself (``Unestimated``, nothing written), estimated and
reserved again, and the task is learnt here, so its later calls are estimated at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from proxy.session.base import BUDGET_LIMITS

if TYPE_CHECKING:
    from proxy.session.base import Ledger

# Past this many tasks with budgets of their own, every call is estimated (the embedded
# ledger) or the tasks are learnt afresh (a shared one): the set stays bounded, and a task it
# could not hold is never reserved without its estimate.
MAX_TRACKED = 100_000


class TaskBudgets:
    __slots__ = ("_tasks", "complete", "learns")

    def __init__(self, complete: bool, *, learns: bool = False) -> None:
        """``complete``: every task's own limits are told here (the embedded ledger).
        ``learns``: the ledger refuses a call without its estimate of a task with a budget of
        its own (``Unestimated``), so such tasks are learnt from its answers (Redis)."""
        self.complete = complete
        self.learns = learns
        self._tasks: set[str] = set()

    @classmethod
    def for_ledger(cls, ledger: Ledger) -> TaskBudgets:
        from proxy.session.memory import MemoryLedger

        # A ledger that raises ``Unestimated`` says so; the Redis module is not loaded to ask.
        learns = bool(getattr(ledger, "asks_for_estimates", False))
        return cls(isinstance(ledger, MemoryLedger), learns=learns)

    def note(self, task: str, limits: Mapping[str, float] | Iterable[str]) -> None:
        """The task has these limits of its own (or their names) from now on."""
        if not (self.complete or self.learns) or BUDGET_LIMITS.isdisjoint(limits):
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
        """Whether any task may have a token or dollar budget of its own (that this process
        knows of, when the ledger tells of the others itself)."""
        return not (self.complete or self.learns) or bool(self._tasks)

    def may_apply(self, task: str) -> bool:
        """Whether the task may have a token or dollar budget of its own."""
        return not (self.complete or self.learns) or task in self._tasks
