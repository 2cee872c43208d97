"""Naming the task and the agent of every call, from what clients already send.

Task, first match wins: a task header (``X-Task-Id`` or another gateway's session header), the
URL prefix, the trace id of a W3C ``traceparent``, else a short hash of the client's credential
(``key:<hash>``) so a zero-config deployment still separates clients, else the connection's own
identity (``peer:<address>``): two untagged callers never share a task. A fallback id is the
base of a session (``proxy/session/sessions.py``), not a task for ever.
Agent: ``X-Agent-Id``, the URL prefix, else a hash of the system prompt (``sys:<hash>``), since
agents of one framework differ by their instructions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import quote

from proxy.config import Tagging
from proxy.pipeline.call import TaskSource

MAX_ID_LENGTH = 128
DEFAULT_AGENT = "default"
ANONYMOUS_TASK = "anonymous"  # only when the connection has no address (a Unix socket)


def clean_id(value: str) -> str:
    """Ids end up in headers and logs: keep them short, printable and ASCII. A slash is escaped
    because ``tenant/task`` is how a tenant's tasks are keyed: no client-chosen id may reach
    into a tenant's namespace."""
    value = value.strip()[:MAX_ID_LENGTH]
    if value.isascii() and value.isprintable() and "/" not in value:
        return value
    return quote(value, safe="")[:MAX_ID_LENGTH]


def short_hash(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=6).hexdigest()


def _trace_id(traceparent: str) -> str | None:
    parts = traceparent.strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return None


class Tagger:
    def __init__(self, settings: Tagging) -> None:
        self.task_headers = [h.lower() for h in settings.task_headers]
        self.agent_headers = [h.lower() for h in settings.agent_headers]
        self.use_traceparent = settings.use_traceparent
        # Tripwire's own tags are consumed here; other gateways' headers travel on unchanged.
        self.consumed = frozenset({"x-task-id", "x-agent-id", *self.agent_headers})

    def task(self, headers: Mapping[str, str], url_task: str | None) -> str:
        return self.tag(headers, url_task)[0]

    def tag(
        self, headers: Mapping[str, str], url_task: str | None, peer: str | None = None
    ) -> tuple[str, TaskSource]:
        """The call's task id and where it came from. ``peer`` is the connection's address,
        the identity of a caller that sends no credential (never a header it could forge)."""
        for name in self.task_headers:
            value = headers.get(name)
            if value and value.strip():
                return clean_id(value), "header"
        if url_task:
            return clean_id(url_task), "path"
        if self.use_traceparent:
            trace = _trace_id(headers.get("traceparent", ""))
            if trace is not None:
                return trace, "traceparent"
        credential = headers.get("authorization") or headers.get("x-api-key")
        if credential:
            return "key:" + short_hash(credential), "fallback"
        if peer:
            return "peer:" + clean_id(peer), "fallback"
        return ANONYMOUS_TASK, "fallback"

    def agent(
        self, headers: Mapping[str, str], url_agent: str | None, system_text: str | None
    ) -> str:
        for name in self.agent_headers:
            value = headers.get(name)
            if value and value.strip():
                return clean_id(value)
        if url_agent:
            return clean_id(url_agent)
        if system_text:
            return "sys:" + short_hash(system_text)
        return DEFAULT_AGENT
