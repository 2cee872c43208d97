"""Reading a call before anything is reserved: its route, its body through the adapter, its
task and agent, the caller's token, the policy that applies, and the prompt's estimate.

Everything a call is refused for here (a bad body, a missing token, a path that escapes its
route) costs nothing: no budget is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from proxy import jsonio
from proxy.auth import Claims, TokenVerifier
from proxy.config import Config
from proxy.errors import AuthError, BadRequest, Forbidden, RouteError, UnboundedCall
from proxy.ids import canonical_id, check_model
from proxy.pipeline.call import Call, TaskSource
from proxy.policy.rules import Effective, PolicyBook
from proxy.providers import ADAPTERS
from proxy.providers.base import CallInfo
from proxy.server import routing
from proxy.server.budgets import TaskBudgets
from proxy.server.limits import read_body
from proxy.server.tables import TokenizerLoader
from proxy.server.tagging import Tagger
from proxy.telemetry.logs import event
from proxy.tokens import estimate_prompt

# What reading a body of the wrong shape raises (a list where an object belongs, a string for
# a number, nesting past the recursion limit).
SHAPE_ERRORS = (TypeError, ValueError, AttributeError, LookupError, RecursionError)
TOKEN_HEADER = "X-Tripwire-Token"
# Methods that never run a model: reading a result, listing, deleting.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
ROUTES_CACHED = 4096


def normal_glob(glob: str) -> str:
    """An ``unbounded_paths`` entry, normalised as paths are (``routing.normal_path``)."""
    return routing.normal_path(glob)


class Intake:
    def __init__(
        self, config: Config, policy: PolicyBook, tagger: Tagger, budgets: TaskBudgets
    ) -> None:
        self.upstreams = config.upstreams
        self.budgets = budgets
        self.upstream_names = frozenset(config.upstreams)
        # Deployment names as paths are read: without case.
        self.deployments = {
            name: {k.lower(): v for k, v in up.deployments.items()}
            for name, up in config.upstreams.items()
        }
        self.policy = policy
        self.tagger = tagger
        self.tokenizer = TokenizerLoader()
        # Agents call the same few paths: each is routed once (a refused path is not kept).
        self._route = lru_cache(maxsize=ROUTES_CACHED)(self._route_of)
        self.verifier = TokenVerifier(config.auth) if config.auth.mode == "jwt" else None
        self.max_body_bytes = config.server.max_body_bytes
        self.body_timeout = config.server.body_timeout
        self.shared_keys = frozenset(n for n, up in config.upstreams.items() if up.resolved_key())
        self.tenant_keys = frozenset(
            (tenant, upstream)
            for tenant, settings in config.tenants.items()
            for upstream, key in settings.upstream_keys.items()
            if key.resolved()
        )
        self.shared_key_tenants = {
            name: frozenset(up.shared_key_tenants)
            | {t for t, settings in config.tenants.items() if settings.use_shared_keys}
            for name, up in config.upstreams.items()
        }
        _announce_unbounded(config)

    async def read(self, request: web.Request, started: float) -> Call:
        route, path = self._route(request.rel_url.raw_path)
        upstream = self.upstreams[route.upstream]
        adapter = ADAPTERS[upstream.format]
        claims, token = self._claims(request) if self.verifier is not None else (None, "")
        raw = await read_body(request, self.max_body_bytes, self.body_timeout)
        info = CallInfo(kind="other")
        parsed: Any = None
        if raw and request.method == "POST":
            try:
                parsed = jsonio.loads(raw)
            except (ValueError, RecursionError) as exc:
                if adapter.parse_request(path, {}).modelled:
                    raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
            if isinstance(parsed, dict):
                try:
                    info = adapter.parse_request(path, parsed)
                except SHAPE_ERRORS as exc:
                    # Without reading the prompt its budget cannot be checked: refuse, not guess.
                    raise BadRequest(
                        f"the request body does not have the shape of a {route.path} request "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
        if info.model:
            # Before the price lookup, a metric label or a log line sees it.
            check_model(info.model)
        deployments = self.deployments[route.upstream]
        if deployments and info.model.lower() in deployments:
            info.model = deployments[info.model.lower()]
        headers = request.headers
        task, source = self.tagger.tag(headers, route.task, request.remote)
        agent = self.tagger.agent(headers, route.agent, info.system_text)
        if claims is not None:
            task, source, agent = _signed_tags(claims, token, task, source, agent)
            if claims.tenant:
                self._check_tenant_key(claims.tenant, route.upstream)
        policy = self._policy(task, agent, source, claims)
        if not info.modelled and policy.has_budget and request.method not in SAFE_METHODS:
            self._check_unbounded(path, route.upstream, upstream.unbounded_paths, policy, task)
        call = Call(
            request,
            route.upstream,
            upstream,
            adapter,
            route.path,
            info,
            task,
            agent,
            source,
            policy,
            0,
            started,
            raw,
            parsed if isinstance(parsed, dict) else None,
            hashlib.blake2b(raw, digest_size=8).hexdigest() if raw else None,
            claims=claims,
            estimated=not info.modelled,
        )
        if self._may_estimate(call):
            # The tokenizer loads with the first call that needs it, off the event loop.
            await self.tokenizer.ready()
        self.estimate(call)
        return call

    def _needs_estimate(self, call: Call) -> bool:
        return not call.estimated and (call.policy.has_budget or self.budgets.may_apply(call.task))

    def _may_estimate(self, call: Call) -> bool:
        """Whether the call needs its estimate now, or may once its session is known (an
        untagged call's session can have a budget of its own, ``estimate`` is called again)."""
        if self._needs_estimate(call):
            return True
        return not call.estimated and call.task_source == "fallback" and self.budgets.any_own()

    def estimate(self, call: Call) -> None:
        """The prompt's estimate, made only where a token or dollar budget needs it before the
        call is reserved; the provider's usage books the rest (``proxy/server/budgets.py``)."""
        if not self._needs_estimate(call):
            return
        info = call.info
        try:
            call.prompt_tokens += estimate_prompt(
                info.prompt, call.adapter.tokenizer_family(info.model)
            )
        except SHAPE_ERRORS as exc:
            # Without reading the prompt its budget cannot be checked: refuse, not guess.
            raise BadRequest(
                f"the request body does not have the shape of a {call.path} request "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        call.estimated = True

    def _route_of(self, raw_path: str) -> tuple[routing.Route, str]:
        """The route of a raw path, and the path the call is classified by."""
        route = routing.resolve(raw_path, self.upstream_names)
        path = route.path
        if "." in path or "%" in path:
            path = _provider_path(path)
        return route, routing.normal_path(path)

    def _check_tenant_key(self, tenant: str, upstream: str) -> None:
        """A tenant's call goes out with the tenant's own provider key; the operator's shared
        key only where the configuration says so (and where there is none to share, the
        caller's own credentials travel as sent)."""
        if upstream not in self.shared_keys:
            return
        if (tenant, upstream) in self.tenant_keys or tenant in self.shared_key_tenants[upstream]:
            return
        raise Forbidden(
            f"tenant '{tenant}' has no provider key of its own for upstream '{upstream}', and "
            f"may not use the shared one (set tenants.{tenant}.upstream_keys.{upstream}, or "
            f"allow it with tenants.{tenant}.use_shared_keys or "
            f"upstreams.{upstream}.shared_key_tenants)"
        )

    def _check_unbounded(
        self, path: str, name: str, opened: tuple[str, ...], policy: Effective, task: str
    ) -> None:
        """Fail closed: under a token or dollar budget, a call Tripwire cannot put a bound
        on is refused unless its path was opened on purpose (``unbounded_paths``)."""
        adapter = ADAPTERS[self.upstreams[name].format]
        if adapter.costs_nothing(path):
            return
        if any(fnmatchcase(path, normal_glob(glob)) for glob in opened + policy.unbounded_paths):
            return
        raise UnboundedCall(
            f"Tripwire cannot bound the cost of {path} (a path it does not model: no prompt "
            f"estimate, no output cap) and task '{task}' runs under a token or dollar budget. "
            "Use a modelled endpoint, or list the path in unbounded_paths of the upstream "
            f"'{name}' or of a policy rule to forward it unaccounted."
        )

    def _policy(
        self, task: str, agent: str, source: TaskSource, claims: Claims | None
    ) -> Effective:
        effective = self.policy.resolve(task, agent, source)
        if claims is not None and claims.limits is not None:
            signed = {k: getattr(claims.limits, k) for k in claims.limits.model_fields_set}
            effective = dataclasses.replace(
                effective, limits=effective.limits.model_copy(update=signed)
            )
        return effective

    def _claims(self, request: web.Request) -> tuple[Claims, str]:
        assert self.verifier is not None
        token = request.headers.get(TOKEN_HEADER)
        if not token:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            raise AuthError(
                f"this Tripwire needs a token: send it as {TOKEN_HEADER} "
                "or as Authorization: Bearer"
            )
        return self.verifier.verify(token), token


def _announce_unbounded(config: Config) -> None:
    """Every opening of the fail-closed rule, once at start-up: an operator must see them."""
    for name, upstream in config.upstreams.items():
        if upstream.unbounded_paths:
            event(
                "unbounded_paths",
                logging.WARNING,
                upstream=name,
                paths=list(upstream.unbounded_paths),
                note="forwarded under a budget without being counted against it",
            )
    for index, rule in enumerate(config.policy.rules):
        if rule.unbounded_paths:
            event(
                "unbounded_paths",
                logging.WARNING,
                rule=rule.name or f"rules[{index}]",
                paths=list(rule.unbounded_paths),
                note="forwarded under a budget without being counted against it",
            )


def _provider_path(path: str) -> str:
    """The path as the provider reads it, to classify the call by. The HTTP client resolves
    ``.`` and ``..`` segments and providers decode escapes, so a call must not be checked here
    as one thing and served there as another: ``/v1/chat/completions/%2e%2e/completions`` would
    reach the provider as a chat completion that escaped its cap, and ``/u/x/../..`` would leave
    the upstream's base path."""
    decoded = unquote(path)
    if any(part in (".", "..") for part in decoded.replace("\\", "/").split("/")):
        raise RouteError(f"no route for a path with '.' or '..' segments: {path}")
    return decoded


def _signed_tags(
    claims: Claims, token: str, task: str, source: TaskSource, agent: str
) -> tuple[str, TaskSource, str]:
    """Signed claims win over anything the client says in headers or the URL."""
    if claims.task:
        task, source = canonical_id(claims.task, "the token's task claim"), "token"
    elif claims.limits is not None:
        # Signed limits bind to the token, or X-Task-Id would mint fresh budgets.
        task, source = canonical_id(claims.bound_task(token), "the token's bound task"), "token"
    elif source == "fallback" and claims.sub:
        # Untagged, but the verified subject names the caller better than a hash.
        task = canonical_id("sub:" + claims.sub, "the token's subject")
    agent = canonical_id(claims.agent, "the token's agent claim") if claims.agent else agent
    if claims.tenant:
        # The only "/" in a task key: no canonical id holds one.
        task = f"{claims.tenant}/{task}"
    return task, source, agent
