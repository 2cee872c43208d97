"""Which upstream serves a path, and the task and agent named in a URL prefix.

    /t/{task}/[a/{agent}/]...   tags the call, then routes the rest
    /u/{name}/...               the upstream named in config, whatever its format
    /v1/messages...             the ``anthropic`` upstream
    /v1/...                     the ``openai`` upstream

Only upstreams named in config can be reached: the client chooses a name, never a host.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from proxy.errors import RouteError


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    path: str  # the path to request upstream, still percent-encoded as the client sent it
    task: str | None
    agent: str | None


def _take(segments: list[str], name: str) -> str | None:
    if len(segments) >= 2 and segments[0] == name and segments[1]:
        value = unquote(segments[1])
        del segments[:2]
        return value
    return None


def resolve(raw_path: str, upstreams: frozenset[str]) -> Route:
    segments = raw_path.lstrip("/").split("/")
    task = _take(segments, "t")
    agent = _take(segments, "a") if task is not None else None
    upstream = _take(segments, "u")
    path = "/" + "/".join(segments)
    if upstream is not None:
        if upstream not in upstreams:
            raise RouteError(f"no upstream named {upstream!r} is configured")
        return Route(upstream, path, task, agent)
    if path.startswith("/v1/messages"):
        return Route("anthropic", path, task, agent)
    if path.startswith("/v1/"):
        return Route("openai", path, task, agent)
    raise RouteError(f"no route for {path}: use /v1/..., /u/{{upstream}}/... or /t/{{task}}/...")
