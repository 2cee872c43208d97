"""The proxy handler: tag, reserve, forward, stream back, settle.

Bytes reach the client as the provider sent them; parsers read copies. The body is rewritten
only to enforce the output cap, to ask for stream usage, or to ask for a worker's status
envelope, and a stream is only ever changed by dropping the usage chunk Tripwire asked for, or
by ending it with an error event on a kill or in place of a blocked worker's closing events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from proxy.auth import Claims, TokenVerifier
from proxy.chaos import Chaos
from proxy.config import Config, Upstream
from proxy.detectors import limits
from proxy.detectors.base import Trip
from proxy.detectors.toolresults import tool_results
from proxy.envelopes import core as envelopes
from proxy.envelopes.gate import (
    BLOCK_STATUS,
    EnvelopeGate,
    block_headers,
    blocked_body,
    blocked_event,
)
from proxy.errors import (
    ERROR_TABLE,
    AuthError,
    BadRequest,
    BudgetBusy,
    Refused,
    RouteError,
    StateUnavailable,
    TripwireError,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.policy.rules import Effective, PolicyBook
from proxy.pricing import Price, PriceBook, cost_usd
from proxy.providers import ADAPTERS, Adapter, CallInfo, Output, Usage
from proxy.server import routing
from proxy.server.headers import request_headers, response_headers
from proxy.server.limits import StreamSlots, TooManyStreams, client_key, read_body
from proxy.server.streaming import StreamRelay
from proxy.server.tagging import Tagger, clean_id
from proxy.session.base import (
    PREVIEW_CHARS,
    Busy,
    CallPlan,
    Denied,
    Grant,
    Ledger,
    Outcome,
    Settled,
    TaskView,
)
from proxy.telemetry.logs import event
from proxy.telemetry.record import CallRecord, Telemetry
from proxy.tokens import estimate_prompt, family_for

_KNOWN_KINDS = ("chat", "responses", "messages")
# What reading a body of the wrong shape raises (a list where an object belongs, a string for
# a number, nesting past the recursion limit).
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, LookupError, RecursionError)
TOKEN_HEADER = "X-Tripwire-Token"


@dataclass(slots=True)
class Call:
    """One proxied call as it moves through the handler."""

    request: web.Request
    upstream_name: str
    upstream: Upstream
    adapter: Adapter
    path: str
    info: CallInfo
    task: str
    agent: str
    prompt_tokens: int
    started: float  # perf_counter at arrival
    raw: bytes
    body: dict[str, Any] | None  # the parsed JSON body, for known kinds
    request_fingerprint: str | None
    price: Price | None = None
    claims: Claims | None = None  # from a verified Tripwire token
    sent: float = 0.0  # perf_counter when the call left for the provider
    headers_at: float = 0.0  # perf_counter when the provider's headers arrived


def refusal_message(task: str, trip: Trip) -> str:
    figures = ", ".join(
        f"{k}={v}" for k, v in trip.figures.items() if k not in ("fingerprint", "scope")
    )
    text = f"Tripwire stopped task '{task}' ({trip.reason}): {trip.detail}."
    if figures:
        text += f" Figures: {figures}."
    return text + " Further calls of this task are refused."


class Forwarder:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        prices: PriceBook,
        session: aiohttp.ClientSession,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.ledger = ledger
        self.prices = prices
        self.session = session
        self.policy = PolicyBook(config.policy)
        self.tagger = Tagger(config.tagging)
        self.upstream_names = frozenset(config.upstreams)
        self.keys = {name: up.resolved_key() for name, up in config.upstreams.items()}
        self.tenant_keys = {
            (tenant, upstream): key.resolved()
            for tenant, settings in config.tenants.items()
            for upstream, key in settings.upstream_keys.items()
        }
        self.verifier = TokenVerifier(config.auth) if config.auth.mode == "jwt" else None
        self._background: set[asyncio.Future[Any]] = set()
        self.chaos = Chaos.from_config(config, self.policy, ledger, telemetry)
        self.envelopes = EnvelopeGate(ledger, telemetry)
        self.streams = StreamSlots.from_settings(config.server)
        self.max_body_bytes = config.server.max_body_bytes
        self.body_timeout = config.server.body_timeout

    # -- entry point ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        route = routing.resolve(request.rel_url.raw_path, self.upstream_names)
        call = await self._prepare(request, route, started)
        if self.chaos is not None:
            injected = await self.chaos.inject(call)
            if injected is not None:
                return injected
        streams, client = self.streams, None
        if streams is not None and call.info.stream:
            client = client_key(request.headers, request.remote)
            try:
                streams.acquire(call.task, client)
            except TooManyStreams as error:
                self._not_forwarded(call, error)
                raise
        try:
            try:
                grant = await self._reserve(call)
            except TripwireError as error:
                self._not_forwarded(call, error)
                raise
            return await self._forward(call, grant, self._enforce(call, grant))
        finally:
            if client is not None and streams is not None:
                streams.release(call.task, client)

    def _not_forwarded(self, call: Call, error: TripwireError) -> None:
        if isinstance(error, Refused):
            outcome, reason = "refused", error.reason
        elif isinstance(error, TooManyStreams):
            outcome = reason = "too_many_streams"
        elif isinstance(error, BudgetBusy):
            outcome = reason = "budget_busy"
        elif isinstance(error, StateUnavailable):
            outcome = reason = "state_unavailable"
        else:
            outcome = reason = error.code
        self.telemetry.refused(reason)
        self.telemetry.call(
            CallRecord(
                call.task,
                call.agent,
                call.upstream_name,
                call.info.model,
                outcome,
                error.status,
                overhead_s=time.perf_counter() - call.started,
                forwarded=False,
            )
        )

    # -- before forwarding ------------------------------------------------------------------

    async def _prepare(self, request: web.Request, route: routing.Route, started: float) -> Call:
        upstream = self.config.upstreams[route.upstream]
        adapter = ADAPTERS[upstream.format]
        path = route.path
        if "." in path or "%" in path:
            path = _provider_path(path)
        claims = self._claims(request) if self.verifier is not None else None
        raw = await read_body(request, self.max_body_bytes, self.body_timeout)
        info = CallInfo(kind="other")
        parsed: Any = None
        if raw and request.method == "POST":
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                if adapter.parse_request(path, {}).kind in _KNOWN_KINDS:
                    raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
            if isinstance(parsed, dict):
                try:
                    info = adapter.parse_request(path, parsed)
                except _SHAPE_ERRORS as exc:
                    # Without reading the prompt its budget cannot be checked: refuse, not guess.
                    raise BadRequest(
                        f"the request body does not have the shape of a {route.path} request "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
        headers = request.headers
        task = self.tagger.task(headers, route.task)
        agent = self.tagger.agent(headers, route.agent, info.system_text)
        if claims is not None:
            # Signed claims win over anything the client says in headers or the URL.
            task = clean_id(claims.task) if claims.task else task
            agent = clean_id(claims.agent) if claims.agent else agent
            if claims.tenant:
                task = f"{claims.tenant}/{task}"
        prompt = (
            estimate_prompt(info.prompt, family_for(upstream.format, info.model))
            if info.kind in _KNOWN_KINDS
            else 0
        )
        fingerprint = hashlib.blake2b(raw, digest_size=8).hexdigest() if raw else None
        return Call(
            request,
            route.upstream,
            upstream,
            adapter,
            route.path,
            info,
            task,
            agent,
            prompt,
            started,
            raw,
            parsed if isinstance(parsed, dict) else None,
            fingerprint,
            claims=claims,
        )

    def _claims(self, request: web.Request) -> Claims:
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
        return self.verifier.verify(token)

    async def _reserve(self, call: Call) -> Grant:
        effective = self.policy.resolve(call.task, call.agent)
        claims = call.claims
        if claims is not None and claims.limits is not None:
            signed = {k: getattr(claims.limits, k) for k in claims.limits.model_fields_set}
            effective = dataclasses.replace(
                effective, limits=effective.limits.model_copy(update=signed)
            )
        if _injects(effective) and call.body is not None and effective.envelope is not None:
            call.prompt_tokens += envelopes.injection_tokens(
                call.body, call.info, effective.envelope
            )
        price = (
            self.prices.lookup(call.info.model, call.upstream.format) if call.info.model else None
        )
        if price is None and call.info.model and self.prices.should_warn_unknown(call.info.model):
            event(
                "price_unknown",
                logging.WARNING,
                model=call.info.model,
                note="cost is not counted for this model; token limits still apply",
            )
        plan = CallPlan(
            call.task,
            call.agent,
            effective,
            call.prompt_tokens,
            call.info.cap,
            call.info.choices,
            price,
            time.time(),
            tenant=claims.tenant if claims else None,
            owner=claims.owner if claims else None,
        )
        try:
            grant = await self.ledger.reserve(plan)
        except Busy as busy:
            raise BudgetBusy(
                f"task '{call.task}' has no budget free right now: {busy.in_flight_tokens} tokens "
                "are reserved by its calls in flight. Retry when they finish."
            ) from None
        except Denied as denied:
            if denied.fresh:
                self.telemetry.trip(call.task, call.agent, denied.trip, "kill", _tenant(call))
            raise self._refused(call, denied.trip) from None
        for trip in grant.observed:
            self.telemetry.trip(call.task, call.agent, trip, "observe", _tenant(call))
        call.price = price
        return grant

    def _refused(self, call: Call, trip: Trip) -> Refused:
        return Refused(
            refusal_message(call.task, trip),
            status=self.config.policy.refuse_status,
            reason=str(trip.reason),
            task=call.task,
            agent=call.agent,
            figures=trip.figures,
        )

    def _enforce(self, call: Call, grant: Grant) -> bytes:
        if call.body is None or call.info.kind not in _KNOWN_KINDS:
            return call.raw
        cap_field = call.info.cap_field
        if cap_field is None and call.info.kind == "chat":
            cap_field = call.upstream.cap_field
        changed = call.adapter.enforce(call.body, call.info, grant.output_cap, cap_field)
        if _injects(grant.policy) and grant.policy.envelope is not None:
            changed = envelopes.inject(call.body, call.info, grant.policy.envelope) or changed
        if changed:
            return json.dumps(call.body).encode()
        return call.raw

    # -- forwarding -------------------------------------------------------------------------

    async def _forward(self, call: Call, grant: Grant, body: bytes) -> web.StreamResponse:
        request = call.request
        url = call.upstream.base_url + call.path
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        drop = self.tagger.consumed
        if call.claims is not None and not request.headers.get(TOKEN_HEADER):
            drop = drop | {"authorization"}  # it carried the Tripwire token, not a provider key
        tenant = call.claims.tenant if call.claims else None
        key = self.tenant_keys.get((tenant, call.upstream_name)) if tenant else None
        headers = request_headers(
            request.headers, drop, call.upstream.format, key or self.keys[call.upstream_name]
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=call.upstream.connect_timeout,
            sock_read=call.upstream.read_timeout,
        )
        call.sent = time.perf_counter()
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except BaseException as exc:
            error = _upstream_error(exc)
            await asyncio.shield(self._settle(call, grant, Usage(), _outcome_of(error), 502))
            raise error from exc
        call.headers_at = time.perf_counter()
        try:
            content_type = upstream.headers.get("Content-Type", "")
            if content_type.startswith("text/event-stream"):
                return await self._stream(call, grant, upstream)
            return await self._buffered(call, grant, upstream)
        finally:
            upstream.release()

    async def _buffered(
        self, call: Call, grant: Grant, upstream: aiohttp.ClientResponse
    ) -> web.Response:
        try:
            data = await upstream.read()
        except BaseException as exc:
            error = _upstream_error(exc)
            await asyncio.shield(
                self._settle(call, grant, Usage(), _outcome_of(error), upstream.status)
            )
            raise error from exc
        received = time.perf_counter()
        usage: Usage | None = None
        output: Output | None = None
        ok = 200 <= upstream.status < 300
        if ok or call.info.kind == "other":
            parsed = _json_copy(data, upstream.headers.get("Content-Type", ""))
            if isinstance(parsed, dict):
                try:
                    usage = call.adapter.usage_from_body(call.info, parsed)
                    if ok and call.info.kind in _KNOWN_KINDS:
                        output = call.adapter.output_from_body(call.info, parsed)
                except _SHAPE_ERRORS as exc:
                    # The body still reaches the client as sent, accounted by what could be read.
                    output = None
                    event("unreadable_response", logging.WARNING, error=type(exc).__name__)
        answered = ok and call.info.kind in _KNOWN_KINDS
        if usage is None or (answered and not usage.total):
            # An answer without usage still cost its prompt (a usage block of nulls or strings
            # reads as none at all); an error answer costs nothing.
            usage = Usage(input_tokens=call.prompt_tokens if answered else 0)
        outcome = "ok" if ok else "provider_error"
        settled = await self._settle(call, grant, usage, outcome, upstream.status, output, received)
        headers = response_headers(upstream.headers)
        status, reason = upstream.status, upstream.reason
        if output is not None and grant.policy.envelope is not None:
            decision = await self.envelopes.judge(
                call.task, call.agent, _tenant(call), grant.policy, output
            )
            if decision is not None and decision.action == "kill" and decision.trip is not None:
                raise self._refused(call, decision.trip)
            if decision is not None and decision.action == "block":
                # The provider's 200 is replaced: the caller must not act on this answer.
                status, reason = BLOCK_STATUS, None
                data = blocked_body(call.adapter, call.upstream.format, decision.message)
                block_headers(headers)
        overhead = (call.sent - call.started) + (time.perf_counter() - received)
        self._tag_headers(headers, call, settled.view, overhead)
        return web.Response(status=status, reason=reason, headers=headers, body=data)

    async def _stream(
        self, call: Call, grant: Grant, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers)
        self._tag_headers(headers, call, grant.view, call.sent - call.started)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(call.request)
        relay = StreamRelay(
            response,
            upstream,
            call.adapter.stream_tally(call.info),
            lambda trip: self._error_event(call, trip),
            lambda: self._broken_event(call),
        )
        settings = grant.policy.envelope
        withhold = settings is not None and settings.may_withhold and _injects(grant.policy)
        # The stream's closing events wait until the call is settled (and a worker's answer
        # judged): a client reading the end of the stream and calling again at once must find
        # a kill this answer caused already in place.
        if withhold:
            relay.hold = envelopes.final_event(call.info.kind)
        else:
            relay.hold = lambda _: relay.tally.final
        settled = False

        async def settle(outcome: str) -> None:
            nonlocal settled
            settled = True
            judge = settings is not None and not withhold
            await self._settle_stream(call, grant, relay, upstream.status, outcome, judge)

        async def release() -> bytes | None:
            # The answer is whole: a kill from here on, its own included, ends the task's next
            # call, not this stream.
            self.ledger.board.unwatch(call.task, relay.cut)
            if deadline is not None:
                deadline.cancel()
            try:
                await settle(relay.outcome(upstream.status))
            except Exception as exc:  # the answer is the provider's: it still reaches the client
                event("settle_failed", logging.ERROR, task=call.task, error=repr(exc))
            return await self._envelope_verdict(call, grant, relay) if withhold else None

        relay.release = release
        self.ledger.board.watch(call.task, relay.cut)
        deadline = self._deadline_timer(call, grant, relay)
        try:
            await relay.run()
        except Exception:
            # The headers are out, so no error answer can follow: drop the connection rather
            # than leave the client waiting for the rest of a stream that will never come.
            if call.request.transport is not None:
                call.request.transport.close()
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
            self.ledger.board.unwatch(call.task, relay.cut)
            if relay.trip is not None:
                self.telemetry.stream_cut(str(relay.trip.reason))
            if not settled:  # cut, broken, left by the client, or ended without its usage
                await settle(relay.outcome(upstream.status))
        return response

    async def _settle_stream(
        self, call: Call, grant: Grant, relay: StreamRelay, status: int, outcome: str, judge: bool
    ) -> None:
        tally = relay.tally
        usage = tally.billed_usage(call.prompt_tokens)
        if not usage.total and tally.final and call.info.kind in _KNOWN_KINDS:
            # Closing usage of nulls or strings: count the stream as if it sent none.
            tally.usage, tally.final = None, False
            usage = tally.billed_usage(call.prompt_tokens)
            tally.final = True
        output = tally.output() if outcome == "ok" else None
        await asyncio.shield(self._settle(call, grant, usage, outcome, status, output))
        if output is not None and judge:
            # A worker's answer that was not withheld is judged as it reaches the caller.
            await asyncio.shield(
                self.envelopes.judge(call.task, call.agent, _tenant(call), grant.policy, output)
            )

    async def _envelope_verdict(self, call: Call, grant: Grant, relay: StreamRelay) -> bytes | None:
        """What replaces a worker's held closing events: None delivers them. The stream is no
        longer watched for kills by then, so this verdict's own kill ends it with the event
        returned here, not as a cut."""
        decision = await self.envelopes.judge(
            call.task, call.agent, _tenant(call), grant.policy, relay.tally.output()
        )
        if decision is None:
            return None
        if decision.action == "block":
            return blocked_event(call.adapter, call.upstream.format, decision.message, call.info)
        if decision.action == "kill" and decision.trip is not None:
            return self._error_event(call, decision.trip)
        return None

    def _error_event(self, call: Call, trip: Trip) -> bytes:
        kind = ERROR_TABLE[Refused]
        error_type = (
            kind.anthropic_type if call.upstream.format == "anthropic" else kind.openai_type
        )
        return call.adapter.error_event(
            refusal_message(call.task, trip), error_type, f"tripwire_{trip.reason}", call.info
        )

    def _broken_event(self, call: Call) -> bytes:
        error = UpstreamError("the provider's stream broke off before its end")
        kind = ERROR_TABLE[UpstreamError]
        error_type = (
            kind.anthropic_type if call.upstream.format == "anthropic" else kind.openai_type
        )
        return call.adapter.error_event(
            error.message, error_type, "upstream_stream_broken", call.info
        )

    def _deadline_timer(
        self, call: Call, grant: Grant, relay: StreamRelay
    ) -> asyncio.TimerHandle | None:
        limit = grant.policy.limits.max_duration
        if limit is None or grant.policy.on_trip != "kill":
            return None
        delay = grant.view.started + limit - time.time()

        def expire() -> None:
            started = grant.view.started
            trip = limits.check_deadline(started, max(time.time(), started + limit + 1e-3), limit)
            assert trip is not None
            relay.cut(trip)
            kill = asyncio.ensure_future(self.ledger.kill(call.task, trip))
            self._background.add(kill)
            kill.add_done_callback(lambda done: self._after_kill(call, trip, done))

        return asyncio.get_running_loop().call_later(max(delay, 0.0), expire)

    def _after_kill(self, call: Call, trip: Trip, done: asyncio.Future[bool]) -> None:
        self._background.discard(done)
        if not done.cancelled() and done.exception() is None and done.result():
            self.telemetry.trip(call.task, call.agent, trip, "kill", _tenant(call))

    # -- after the call ---------------------------------------------------------------------

    async def _settle(
        self,
        call: Call,
        grant: Grant,
        usage: Usage,
        outcome: str,
        status: int,
        output: Output | None = None,
        received: float | None = None,
    ) -> Settled:
        """Book the call's usage, run the completion detectors, and record the call."""
        price = call.price
        cost = 0.0
        if price is not None:
            uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
            cost = cost_usd(
                price,
                max(uncached, 0),
                usage.output_tokens,
                usage.cached_tokens,
                usage.cache_write_tokens,
            )
        completed = outcome == "ok"
        settled = await self.ledger.settle(
            grant,
            Outcome(
                usage.total,
                cost,
                output.fingerprint() if output is not None else None,
                call.request_fingerprint if completed else None,
                completed,
                output.text[:PREVIEW_CHARS] if output is not None else "",
            ),
        )
        view = settled.view
        # Figures first: a kill below ends the task with them.
        self.telemetry.task(call.task, view.tokens_used, view.calls, view.hops, view.cost_usd)
        for trip in settled.trips:
            action = "kill" if settled.killed else "observe"
            self.telemetry.trip(call.task, call.agent, trip, action, _tenant(call))
        if (
            completed
            and output is not None
            and (output.text or output.tool_calls)
            and grant.policy.content_detection
        ):
            # Off the response's path: these detectors are heuristics over a window, and a
            # kill they decide refuses the task's next call like any other.
            detection = asyncio.ensure_future(self._observe_content(call, grant, output))
            self._background.add(detection)
            detection.add_done_callback(self._background.discard)
        now = time.perf_counter()
        self.telemetry.call(
            CallRecord(
                call.task,
                call.agent,
                call.upstream_name,
                call.info.model,
                outcome,
                status,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                cost,
                latency_s=(received or now) - call.sent,
                ttfb_s=(call.headers_at or now) - call.sent,
                overhead_s=(call.sent - call.started) + (now - (received or now)),
            )
        )
        return settled

    async def _observe_content(self, call: Call, grant: Grant, output: Output) -> None:
        try:
            results = tool_results(call.body) if call.body is not None else []
            reported = await self.ledger.observe_content(
                call.task, call.agent, output.text, grant.policy, output.tool_calls, results
            )
        except Exception as exc:  # a faulty detector is logged, never breaks traffic
            event("detector_failed", logging.ERROR, task=call.task, error=repr(exc))
            return
        for trip, action in reported:
            self.telemetry.trip(call.task, call.agent, trip, action, _tenant(call))

    def _tag_headers(self, headers: Any, call: Call, view: TaskView, overhead_s: float) -> None:
        headers["X-Tripwire-Task"] = call.task
        headers["X-Tripwire-Agent"] = call.agent
        headers["X-Tripwire-Tokens-Used"] = str(view.tokens_used)
        left = view.tokens_left
        if left is not None:
            headers["X-Tripwire-Tokens-Left"] = str(left)
        headers["X-Tripwire-Calls"] = str(view.calls)
        headers["X-Tripwire-Hops"] = str(view.hops)
        headers["X-Tripwire-Overhead-Ms"] = f"{overhead_s * 1000:.2f}"


def _injects(policy: Effective) -> bool:
    """Whether a worker's envelope may change its traffic: not in shadow mode."""
    return policy.envelope is not None and policy.on_trip != "observe"


def _tenant(call: Call) -> str | None:
    return call.claims.tenant if call.claims is not None else None


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


def _json_copy(data: bytes, content_type: str) -> Any:
    if "json" not in content_type or not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _outcome_of(error: Exception) -> str:
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamError):
        return "unreachable"
    return "interrupted"


def _upstream_error(exc: BaseException) -> Exception:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("the provider did not answer in time")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(f"the provider could not be reached: {type(exc).__name__}")
    return exc if isinstance(exc, Exception) else UpstreamError("the call was interrupted")
