"""Reloading the policy and the tagging settings without a restart (``SIGHUP``, or
``POST /tripwire/v1/reload`` which ``tripwire reload`` calls).

The whole configuration is read and validated again first, exactly as at start-up; a file that
does not load leaves everything running as it was and the error is reported. Only the sections
that are read per call take effect (``RELOADABLE``); a change elsewhere (listen address,
upstreams, state backend, auth) is reported as needing a restart and not applied. Task state
lives in the ledger and is never touched: counts, kills and windows carry on under the new
rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config
from proxy.errors import ConfigError
from proxy.telemetry.logs import event

RELOADABLE = ("policy", "tagging")
# Read once to build the policy; the policy itself is compared.
_DERIVED = frozenset({"policy_file"})
_SHOWN_CHARS = 120


@dataclass(slots=True)
class ReloadReport:
    changed: list[str] = field(default_factory=list)  # "policy.defaults.max_calls: 200 -> 50"
    restart_needed: list[str] = field(default_factory=list)  # sections changed but not applied


def one_line(message: str) -> str:
    """A config error as one line (its fields are listed one a line at start-up)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return (lines[0].rstrip(":") + ": " + "; ".join(lines[1:])) if len(lines) > 1 else message


def _flat(value: Any, prefix: str, into: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flat(item, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = value
    return into


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def compare(old: Config, new: Config) -> ReloadReport:
    report = ReloadReport()
    for section in RELOADABLE:
        before = _flat(getattr(old, section).model_dump(mode="json"), section, {})
        after = _flat(getattr(new, section).model_dump(mode="json"), section, {})
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                report.changed.append(
                    f"{key}: {_shown(before.get(key))} -> {_shown(after.get(key))}"
                )
    for section in type(old).model_fields:
        if section in RELOADABLE or section in _DERIVED:
            continue
        if getattr(old, section) != getattr(new, section):
            report.restart_needed.append(section)
    # These addons are built at start-up only when some rule uses them.
    for feature in ("envelope", "chaos"):
        had = any(getattr(rule, feature) is not None for rule in old.policy.rules)
        has = any(getattr(rule, feature) is not None for rule in new.policy.rules)
        if has and not had:
            report.restart_needed.append(f"policy.rules[].{feature} (first rule using it)")
    return report


class Reloader:
    """Reads the configuration again and hands the changeable part to ``apply``."""

    def __init__(
        self, current: Config, load: Callable[[], Config], apply: Callable[[Config], None]
    ) -> None:
        self.current = current
        self.load = load
        self.apply = apply
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> ReloadReport:
        """Raises ``ConfigError`` (and logs ``reload_failed``) when the files do not load; the
        running configuration then stays in place."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(self.load)
            except ConfigError as error:
                event(
                    "reload_failed",
                    logging.ERROR,
                    trigger=trigger,
                    error=one_line(str(error)),
                    note="the running policy stays in place",
                )
                raise
            report = compare(self.current, new)
            if report.changed:
                merged = self.current.model_copy(
                    update={section: getattr(new, section) for section in RELOADABLE}
                )
                self.apply(merged)
                self.current = merged
            event(
                "reloaded",
                logging.WARNING if report.restart_needed else logging.INFO,
                trigger=trigger,
                changed=report.changed or None,
                restart_needed=report.restart_needed or None,
            )
            return report

    async def reload_logged(self, trigger: str) -> None:
        """For a signal: the outcome goes to the log only."""
        try:
            await self.reload(trigger)
        except ConfigError:
            pass  # logged by reload()
        except Exception as exc:  # a reload must never take the server down
            event("reload_failed", logging.ERROR, trigger=trigger, error=repr(exc))
