"""The embedded ledger's optional local file (``state.persist_file``): kills and budgets that
outlive a restart.

What is kept of each task: its clock, its spend (tokens, cost, calls, hops, each agent's
tokens and the last agent), its own limits and extensions, its tenant and owner, its timeline
and its kill; and each untagged client's session (its start, last call and, once killed, its
end), so such a client stays in its session. Detector windows and previews are not: a
restarted proxy forgets repeats in progress. The file is bounded (every killed task the ledger
keeps, and the most recently seen others up to ``MAX_RECORDS``; sessions up to
``MAX_RECORDS``) and written whole to a temporary file then renamed over the old one, so a
crash mid-write leaves the last good copy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from proxy.telemetry.logs import event

VERSION = 1
MAX_RECORDS = 20_000
MAX_FILE_BYTES = 64 * 1024 * 1024


def write(
    path: Path, records: list[dict[str, Any]], sessions: list[dict[str, Any]] | None = None
) -> None:
    """Blocking: run it off the event loop."""
    saved = {"version": VERSION, "tasks": records, "sessions": sessions or []}
    body = json.dumps(saved, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def read(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The task and session records of a file written by ``write``; none (and a warning) for
    a missing, oversized or unreadable one: a bad file must not stop the proxy starting."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            event("state_file_unread", logging.WARNING, reason="too large")
            return [], []
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError, RecursionError) as exc:
        event("state_file_unread", logging.WARNING, reason=type(exc).__name__)
        return [], []
    if not isinstance(data, dict) or data.get("version") != VERSION:
        event("state_file_unread", logging.WARNING, reason="unknown version")
        return [], []
    return _records(data.get("tasks")), _records(data.get("sessions"))


def _records(found: Any) -> list[dict[str, Any]]:
    return (
        [r for r in found if isinstance(r, dict)][:MAX_RECORDS] if isinstance(found, list) else []
    )
