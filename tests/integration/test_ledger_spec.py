"""The detector registry is the one spec of the ledger rules: every trip reason has an entry,
every sentence reads only declared figures, and the trips the Lua scripts build are the very
trips Python builds from the same figures."""

from __future__ import annotations

import json
import string
from typing import Any

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.detectors import limits
from proxy.detectors.base import Trip, TripReason
from proxy.detectors.registry import BY_REASON, DETECTORS, RESERVE
from proxy.detectors.spec import Detector
from proxy.session import redis_scripts


def test_every_trip_reason_has_one_entry() -> None:
    assert sorted(BY_REASON) == sorted(TripReason)
    assert len(DETECTORS) == len(BY_REASON)


def test_every_sentence_reads_only_declared_figures() -> None:
    for detector in DETECTORS:
        used = {name for _, name, _, _ in string.Formatter().parse(detector.message) if name}
        declared = {figure.name for figure in detector.figures}
        assert used <= declared, detector.reason


def test_every_reserve_check_has_its_lua_twin() -> None:
    for detector in RESERVE:
        assert detector.check is not None and detector.lua.strip(), detector.reason
        assert f"trip_{detector.reason}(" in redis_scripts.RESERVE


def _lua_trip(client: redis.Redis, detector: Detector, values: list[Any]) -> Trip:
    """The trip the generated Lua constructor builds from these figures (None: nil)."""

    def read(n: int, value: Any) -> str:
        if value is None:
            return "nil"
        return f"tonumber(ARGV[{n}])" if isinstance(value, int | float) else f"ARGV[{n}]"

    args = ", ".join(read(n, value) for n, value in enumerate(values, start=1))
    script = (
        redis_scripts._PRELUDE
        + detector.lua_constructor()
        + f"return trip_{detector.reason}({args}).json"
    )
    sent = ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values]
    return Trip.from_json(client.eval(script, 0, *sent))  # type: ignore[arg-type]


money = st.floats(0, 10_000, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    limit=money,
    used=money,
    reserved=money,
    left=money,
    prompt=st.integers(0, 10**6),
    model=st.sampled_from(["gpt-4o", 'a "quoted" model', "modèle"]),
)
def test_lua_builds_the_cost_trip_python_builds(
    redis_server: Any,
    limit: float,
    used: float,
    reserved: float,
    left: float,
    prompt: int,
    model: str,
) -> None:
    spec = BY_REASON[TripReason.BUDGET_COST]
    values = [limit, used, reserved, left, prompt, model]
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        lua = _lua_trip(client, spec, values)
    python = spec.trip(**{f.name: v for f, v in zip(spec.figures, values, strict=True)})
    assert lua == python
    assert lua.detail == python.detail


@settings(max_examples=100, deadline=None)
@given(elapsed=st.floats(0, 10**7, allow_nan=False), limit=st.floats(0, 10**7, allow_nan=False))
def test_lua_rounds_the_deadline_figures_as_python_does(
    redis_server: Any, elapsed: float, limit: float
) -> None:
    spec = BY_REASON[TripReason.DEADLINE]
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        lua = _lua_trip(client, spec, [elapsed, limit])
    assert lua == spec.trip(elapsed_s=elapsed, max_duration_s=limit)


def test_a_hop_trip_without_a_previous_agent_leaves_the_figure_out(redis_server: Any) -> None:
    spec = BY_REASON[TripReason.MAX_HOPS]
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        lua = _lua_trip(client, spec, [5, 2, None, "critic"])
    python = limits.check_hops(None, "critic", 5, 2)
    assert (
        lua == python == Trip(TripReason.MAX_HOPS, {"hops": 5, "max_hops": 2, "to_agent": "critic"})
    )
    assert python.detail == (
        "handing off from no previous agent to critic would be hop 5, over the limit of 2"
    )
    assert json.loads(python.to_json())["figures"].get("from_agent") is None
