"""The human-readable start-up summary: where to point agents, and what the policy will do.

The JSON ``listening`` line is for machines; this is for the person who just typed
``make serve`` and wants to know the URL to paste and which limits are in force.
"""

from __future__ import annotations

from pydantic import BaseModel
from yarl import URL

from proxy.config import Config, Limits, Policy

_LIMIT_NAMES = {
    "max_tokens": "tokens",
    "max_tokens_per_agent": "tokens per agent",
    "max_cost_usd": "USD",
    "max_calls": "calls",
    "max_hops": "hops",
    "max_duration": "duration",
}


def shown_url(url: str) -> str:
    """A base URL may carry a credential (``https://user:key@host``): show it without."""
    return str(URL(url).with_user(None)) if "@" in url else url


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def describe_limits(limits: Limits) -> str:
    parts = []
    for field, label in _LIMIT_NAMES.items():
        value = getattr(limits, field, None)
        if value is None:
            continue
        shown = _duration(value) if field == "max_duration" else f"{value:g}"
        parts.append(f"{label} {shown}")
    return ", ".join(parts) if parts else "none"


def describe_detectors(policy: Policy) -> tuple[list[str], list[str]]:
    """The loop detectors that stop a task and those that only observe (shadow mode)."""
    kill = [f"repeat (same output or request {policy.repeat.threshold}x)"]
    observe: list[str] = []
    for name in type(policy).model_fields:
        section = getattr(policy, name)
        if not isinstance(section, BaseModel) or not hasattr(section, "action"):
            continue
        if not getattr(section, "enabled", True):
            continue
        (kill if section.action == "kill" else observe).append(name)
    if policy.on_trip == "observe":
        observe, kill = kill + observe, []
    return kill, observe


def describe_sessions(config: Config) -> str:
    sessions = config.tagging.sessions
    if not sessions.enabled:
        return "one task per client (sessions off)"
    return (
        f"a session per client, ending after {_seconds(sessions.idle_gap)} idle or "
        f"{_seconds(sessions.cooldown)} after a kill"
    )


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def startup_summary(config: Config, url: str, *, mock: bool = False) -> str:
    policy = config.policy
    kill, observe = describe_detectors(policy)
    on_trip = (
        f"kill (later calls refused with {policy.refuse_status})"
        if policy.on_trip == "kill"
        else "observe (log and count only)"
    )
    state: str = config.state.backend
    if state == "memory":
        state = "embedded (in memory, this process only)"
    auth = "JWT required" if config.auth.mode == "jwt" else "off (no Tripwire token needed)"
    lines = [
        f"Tripwire is listening on {url}",
        "  Point your agents here:",
        f"    OPENAI_BASE_URL={url}/v1",
        f"    ANTHROPIC_BASE_URL={url}",
        "  Upstreams: "
        + ("the built-in mock provider (no API key needed)" if mock else "")
        + ", ".join(
            f"{name} -> {shown_url(upstream.base_url)}"
            for name, upstream in config.upstreams.items()
            if not mock
        ),
        f"  State: {state}",
        f"  Auth: {auth}",
        f"  Policy: {config.policy_source}",
        f"    limits per task: {describe_limits(policy.defaults)}",
        f"    on a trip: {on_trip}",
        f"    detectors that stop a task: {', '.join(kill) or 'none'}",
        f"    detectors in shadow mode: {', '.join(observe) or 'none'}",
        f"    rules: {len(policy.rules)}",
        f"  Untagged calls: {describe_sessions(config)}",
        f"  Metrics: {url}{config.telemetry.metrics_path}",
    ]
    return "\n".join(lines)
