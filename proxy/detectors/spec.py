"""What a detector declares about itself, once, for every ledger and for ``tripwire replay``.

A ``Detector`` names its trip reason, the sentence a person reads, its figures (and how each is
rounded), the policy settings it reads, when it runs (its phase) and the per-task state it
keeps. The ledgers iterate the registry (``registry.py``) rather than list reasons by hand, and
the Redis ledger's Lua is assembled from the same entries: the reserve-phase checks are Lua
snippets kept next to their Python twins, and every trip a script builds goes through a
constructor generated from the figures declared here, with the same rounding.

Rounding is one rule in both languages: a figure with ``decimals`` is the double nearest to the
value printed with that many decimals (``f"{x:.6f}"`` in Python, ``string.format('%.6f', x)``
in Lua: both round the exact binary value, ties to even), so a trip recorded by either ledger
carries the very same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from proxy.detectors.base import DESCRIBE, Trip, TripReason

if TYPE_CHECKING:
    from proxy.config import Limits
    from proxy.pricing import Price

# reserve: checked atomically before a call is forwarded (Python in memory, Lua in Redis);
# settle: checked when a call's usage is booked; content: on a completion's text, in Python
# for both backends; outside: decided by someone else (an operator, a worker's envelope).
Phase = Literal["reserve", "settle", "content", "outside"]


def rounded(value: float, decimals: int) -> float:
    """The figure rule shared with Lua's ``string.format('%.<d>f')``: see the module's note."""
    return float(f"{value:.{decimals}f}")


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    decimals: int | None = None  # money and seconds are rounded, in both ledgers alike
    optional: bool = False  # left out of the trip when there is no value (never "None")


@dataclass(frozen=True, slots=True)
class Allowance:
    """A reserve-phase check's answer: output tokens this call may still produce (None: no
    bound), the trip when it may not go, or ``busy`` when only calls in flight hold what it
    needs (wait for them, do not kill)."""

    output: int | None
    trip: Trip | None = None
    busy: bool = False


# The answer of a check with nothing to say (no bound, no trip): one shared object, so a call
# no budget or limit touches builds none.
NO_BOUND = Allowance(None)


@dataclass(slots=True)
class Reservation:
    """What a reserve-phase check sees: the call, the task's limits and its figures so far.
    The Lua twin of a check reads script locals of the same names. Checks only read it (not
    frozen: one is built for every call, and a frozen one costs a setattr call per field)."""

    task: str
    agent: str
    prompt: int  # the prompt's estimated tokens
    price: Price | None
    now: float
    started: float
    limits: Limits
    max_duration: float | None  # the limit plus any extension
    used: int
    reserved: int
    agent_used: int
    agent_reserved: int
    cost: float
    cost_reserved: float
    calls: int
    hops: int
    last_agent: str | None


# A reserve-phase check: the call's allowance under one limit.
Check = Callable[[Reservation], Allowance]


@dataclass(frozen=True, slots=True)
class Detector:
    reason: TripReason
    phase: Phase
    message: str  # str.format template over the figures
    figures: tuple[Figure, ...]
    settings: tuple[str, ...] = ()  # the policy fields it reads, e.g. "limits.max_calls"
    state: tuple[str, ...] = ()  # what it keeps per task, for the ledgers to store
    # Words for an optional figure that is missing, in the sentence only.
    absent: Mapping[str, str] = field(default_factory=dict)
    # reserve phase: the Python check, and its Lua twin (a snippet of the reserve script that
    # reads the script's locals and calls ``trip_<reason>(...)``; see redis_scripts.py).
    check: Check | None = None
    lua: str = ""
    # settle phase: a fingerprint seen ``threshold`` times in a window trips. ``fingerprint``
    # names the ``Outcome`` field it watches; ``window`` whose window it keeps (the task's or
    # each agent's); ``bounds`` reads (threshold, window size) from the policy.
    fingerprint: str = ""
    window: Literal["task", "agent"] = "task"
    bounds: Callable[[Any], tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        DESCRIBE[self.reason] = self.detail

    def trip(self, **figures: Any) -> Trip:
        """A trip of this detector, its figures rounded and ordered as declared."""
        values: dict[str, Any] = {}
        for figure in self.figures:
            value = figures.get(figure.name)
            if value is None:
                if figure.optional:
                    continue
                raise ValueError(f"{self.reason}: figure {figure.name} is required")
            if figure.decimals is not None:
                value = rounded(float(value), figure.decimals)
            values[figure.name] = value
        return Trip(self.reason, values)

    def detail(self, figures: Mapping[str, Any]) -> str:
        return self.message.format(**{**self.absent, **figures})

    def lua_constructor(self) -> str:
        """``trip_<reason>(figures...)``: the trip as a table ``{reason, json}``, its JSON
        written by hand so that numbers keep all 17 digits (cjson keeps 14)."""
        names = [figure.name for figure in self.figures]
        parts = ", ".join(
            f"fig('{f.name}', {f.name}, {'nil' if f.decimals is None else f.decimals}, "
            f"{'true' if f.optional else 'false'})"
            for f in self.figures
        )
        return (
            f"local function trip_{self.reason}({', '.join(names)})\n"
            f"  return make_trip('{self.reason}', {{{parts}}})\n"
            "end\n"
        )
