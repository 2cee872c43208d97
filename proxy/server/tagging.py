"""Naming the task and the agent of every call, from what clients already send.

Task, first match wins: a task header (``X-Task-Id`` or another gateway's session header), the
URL prefix, the trace id of a W3C ``traceparent``, else a short hash of the client's credential
(``key:<hash>``) so a zero-config deployment still separates clients, else the connection's own
identity (``peer:<address>``): two untagged callers never share a task. A fallback id is the
base of a session (``proxy/session/sessions.py``), not a task for ever.
Agent: ``X-Agent-Id``, the URL prefix, else a hash of the system prompt (``sys:<hash>``), since
agents of one framework differ by their instructions.
Whatever the source, the id leaves here in the one canonical form of ``proxy.ids``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache

from proxy.config import Tagging
from proxy.ids import canonical_id
from proxy.pipeline.call import TaskSource

DEFAULT_AGENT = "default"
ANONYMOUS_TASK = "anonymous"  # only when the connection has no address (a Unix socket)
# W3C Trace Context: version, 32 hex digits of trace id, 16 of parent id, flags. Upper case is
# read too (and lowered), as some tracers send it.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}", re.IGNORECASE)


def short_hash(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=6).hexdigest()


def _trace_id(traceparent: str) -> str | None:
    """The trace id of a well-formed ``traceparent``; anything else is ignored, as the W3C
    spec asks, so the header cannot carry an id of the client's choosing past the checks."""
    match = _TRACEPARENT.match(traceparent.strip()[:256])
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1).lower()


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
        """The call's task id, in canonical form whatever its source, and where it came from.
        ``peer`` is the connection's address, the identity of a caller that sends no credential
        (never a header it could forge)."""
        raw, source, where = self._task(headers, url_task, peer)
        return canonical_id(raw, f"the task id {where}"), source

    def _task(
        self, headers: Mapping[str, str], url_task: str | None, peer: str | None
    ) -> tuple[str, TaskSource, str]:
        """The task id as the client sent it, its source, and where it was read."""
        for name in self.task_headers:
            value = headers.get(name)
            if value and value.strip():
                return value, "header", f"in {name}"
        if url_task:
            return url_task, "path", "in the URL"
        if self.use_traceparent:
            trace = _trace_id(headers.get("traceparent", ""))
            if trace is not None:
                return trace, "traceparent", "in traceparent"
        credential = headers.get("authorization") or headers.get("x-api-key")
        if credential:
            return "key:" + short_hash(credential), "fallback", "of the credential"
        if peer:
            return "peer:" + peer, "fallback", "of the connection"
        return ANONYMOUS_TASK, "fallback", "of an untagged call"

    def agent(
        self, headers: Mapping[str, str], url_agent: str | None, system_text: str | None
    ) -> str:
        """The call's agent id, in canonical form whatever its source."""
        for name in self.agent_headers:
            value = headers.get(name)
            if value and value.strip():
                return canonical_id(value, f"the agent id in {name}")
        if url_agent:
            return canonical_id(url_agent, "the agent id in the URL")
        if system_text:
            # An agent sends the same system prompt on every call: the last few ids are
            # remembered (256 prompts of up to 16 KiB, 4 MiB at most).
            if len(system_text) <= _REMEMBERED_PROMPT:
                return _remembered_system_agent(system_text)
            return _system_agent(system_text)
        return DEFAULT_AGENT


_REMEMBERED_PROMPT = 16_384


def _system_agent(system_text: str) -> str:
    """The agent id of a system prompt: ``sys:`` and a short hash, canonical as it is."""
    return "sys:" + short_hash(system_text)


_remembered_system_agent = lru_cache(maxsize=256)(_system_agent)
