"""Which upstream serves a path, and the task and agent named in a URL prefix.

    /t/{task}/[a/{agent}/]...   tags the call, then routes the rest
    /u/{name}/...               the upstream named in config, whatever its format
    /v1/messages...             the ``anthropic`` upstream
    /v1beta/..., /v1/models/{model}:...   the ``gemini`` upstream
    /v1/...                     the ``openai`` upstream

(the last three: each adapter's ``default_routes``, the longest prefix first; a ``*`` in a
route stands for one path segment's characters, so ``/v1/models/*:`` claims Gemini's
``/v1/models/gemini-2.5-flash:generateContent`` and leaves OpenAI's ``/v1/models/gpt-4o``).

Only upstreams named in config can be reached: the client chooses a name, never a host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.errors import RouteError
from proxy.providers import ADAPTERS


def _matcher(route: str) -> Callable[[str], object]:
    if "*" not in route:
        return lambda path: path.startswith(route)
    return re.compile("[^/]*".join(map(re.escape, route.split("*")))).match


# (matcher, upstream): a path no upstream is named for goes to the format that claims it.
_DEFAULT_ROUTES = [
    (_matcher(route), name)
    for route, name in sorted(
        ((r, name) for name, adapter in ADAPTERS.items() for r in adapter.default_routes),
        key=lambda route: -len(route[0]),
    )
]


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    path: str  # the path to request upstream, still percent-encoded as the client sent it
    task: str | None
    agent: str | None


def normal_path(path: str) -> str:
    """The path a call is classified by: lower case, no empty segment, no trailing slash.
    Providers serve ``/V1//chat/completions/`` as a chat completion, so it must be read as one
    here too; the path forwarded is still the client's."""
    normal = "/" + "/".join(part for part in path.lower().split("/") if part)
    return normal


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
    normal = normal_path(path)
    for matches, name in _DEFAULT_ROUTES:
        if matches(normal):
            return Route(name, path, task, agent)
    raise RouteError(f"no route for {path}: use /v1/..., /u/{{upstream}}/... or /t/{{task}}/...")
