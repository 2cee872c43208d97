"""The call pipeline's core: read the call, reserve and cap, send, relay, settle.

Everything else a call may meet (chaos, envelopes, stream slots, the deadline, content
detection, telemetry, the ``X-Tripwire-*`` headers) is an addon in ``proxy/addons/``, run at
the hooks named in ``proxy/pipeline/hooks.py`` in the order ``proxy/app.py`` lists them. Every
trip goes out on the trip bus. Wire formats are the adapters' business (``proxy/providers/``).

Bytes reach the client as the provider sent them; parsers read copies. The body is rewritten
only to enforce the output cap or where an addon asks (a worker's status envelope), and a
stream is only ever changed by dropping the usage chunk Tripwire asked for, or by ending it
with an error event on a kill or in place of an answer an addon replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from proxy import jsonio, tokens
from proxy.config import Config
from proxy.detectors.base import Trip
from proxy.detectors.budget import BUDGET_TOKENS
from proxy.errors import (
    BudgetBusy,
    Forbidden,
    TokenizerUnavailable,
    TripwireError,
    UnboundedCall,
    refusal_reason,
    refused_by,
    session_refusal,
)
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Intervention, Settlement
from proxy.pipeline.hooks import Hooks
from proxy.policy.rules import PolicyBook
from proxy.pricing import PriceBook
from proxy.providers import StreamTally
from proxy.providers.base import Output, StreamDecoder, Usage
from proxy.server import answers
from proxy.server.budgets import TaskBudgets
from proxy.server.headers import response_headers
from proxy.server.intake import Intake
from proxy.server.sse import SSEEvent
from proxy.server.streaming import StreamRelay
from proxy.server.tables import Tables
from proxy.server.tagging import Tagger
from proxy.server.upstream import UpstreamClient, outcome_of, upstream_error
from proxy.session.base import (
    BUDGET_LIMITS,
    PREVIEW_CHARS,
    Busy,
    CallPlan,
    Denied,
    Grant,
    Ledger,
    Outcome,
    Unestimated,
)
from proxy.session.sessions import session_id
from proxy.telemetry.logs import event


class Forwarder:
    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        prices: PriceBook,
        session: aiohttp.ClientSession,
        hooks: Hooks,
        bus: TripBus,
        count_refusal: Callable[[str], None] | None = None,
        budgets: TaskBudgets | None = None,
    ) -> None:
        tagger = Tagger(config.tagging)
        # Tasks with budgets of their own: every one is known here with the embedded ledger.
        self.budgets = budgets or TaskBudgets.for_ledger(ledger)
        self.intake = Intake(config, PolicyBook(config.policy), tagger, self.budgets)
        self.upstream = UpstreamClient(config, session, tagger.consumed)
        self.ledger = ledger
        self.prices = prices
        self.tables = Tables(prices)
        self.hooks = hooks
        self.bus = bus
        self.refuse_status = config.policy.refuse_status
        self.max_event = config.server.max_event_bytes
        self.sessions = config.tagging.sessions
        self.count_refusal = count_refusal

    def apply(self, config: Config) -> None:
        """A reloaded policy and tagging settings: the next call reads them; calls in flight
        finish under the rules they started with."""
        tagger = Tagger(config.tagging)
        self.intake.policy = PolicyBook(config.policy)
        self.intake.tagger = tagger
        self.upstream.consumed = tagger.consumed
        self.refuse_status = config.policy.refuse_status
        self.sessions = config.tagging.sessions

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if not self.prices.loaded:  # the first call loads the prices, for its cost
            self.tables.load_prices()
        try:
            call = await self.intake.read(request, started)
        except (UnboundedCall, Forbidden) as refused:
            # Refused by policy before there is a call to hook (or a task): counted here.
            if self.count_refusal is not None:
                self.count_refusal(refusal_reason(refused))
            raise
        try:
            try:
                if call.task_source == "fallback" and self.sessions.enabled:
                    await self._open_session(call)
                    self.intake.estimate(call)  # the session may have a budget of its own
                for hook in self.hooks.request:
                    answer = await hook(call)
                    if answer is not None:
                        return answer
                grant = await self._reserve(call)
            except TripwireError as error:
                self.hooks.refused(call, error)
                raise
            return await self._forward(call, grant, self._enforce(call, grant))
        finally:
            self.hooks.done(call)

    # -- sessions of untagged traffic -------------------------------------------------------

    async def _open_session(self, call: Call) -> None:
        """An untagged call's task is its client's current session (``proxy/session/
        sessions.py``): limits and loop windows are the session's, not the client's for ever."""
        base = call.task
        span = await self.ledger.open_session(base, self.sessions.idle_gap)
        call.session_base, call.session_start = base, span.start
        call.session_ends = span.ends
        call.task = session_id(base, span.start)

    async def _refused(self, call: Call, trip: Trip, first_call: bool = False) -> TripwireError:
        """The refusal of a killed task's call; a session's says when its client's calls are
        accepted again. A task's first call refused killed nothing: its session goes on."""
        error = refused_by(trip, call.task, call.agent, self.refuse_status, first_call=first_call)
        if call.session_base is None or first_call:
            return error
        ends = call.session_ends
        if ends is None:
            ends = await self.ledger.end_session(
                call.session_base, call.session_start, self.sessions.cooldown
            )
        if ends is not None:
            error.message = session_refusal(call.task, trip, ends, time.time())
            error.args = (error.message,)
        return error

    # -- reserve and cap --------------------------------------------------------------------

    async def _reserve(self, call: Call) -> Grant:
        model = call.info.model
        price = self.prices.lookup(model, call.adapter.price_provider) if model else None
        if price is None and model and self.prices.should_warn_unknown(model):
            event(
                "price_unknown",
                logging.WARNING,
                model=model,
                note="cost is not counted for this model; token limits still apply",
            )
        claims = call.claims
        plan = CallPlan(
            call.task,
            call.agent,
            call.policy,
            call.prompt_tokens,
            call.info.cap,
            call.info.choices,
            price,
            time.time(),
            tenant=claims.tenant if claims else None,
            owner=claims.owner if claims else None,
            estimated=call.estimated,
        )
        call.reserved_at = plan.now
        try:
            try:
                grant = await self.ledger.reserve(plan)
            except Unestimated:
                # A budget of the task's own that this process had not heard of (set through
                # another replica): the prompt is estimated, and so are the task's next calls.
                self.budgets.note(call.task, BUDGET_LIMITS)
                await self.intake.tokenizer.ready()
                self.intake.estimate(call)
                plan.prompt_tokens, plan.estimated = call.prompt_tokens, True
                grant = await self.ledger.reserve(plan)
        except Busy as busy:
            raise BudgetBusy(
                f"task '{call.task}' has no budget free right now: {busy.in_flight_tokens} tokens "
                "are reserved by its calls in flight. Retry when they finish."
            ) from None
        except Denied as denied:
            if denied.fresh or denied.first_call:
                # A first call refused is a trip of the kill policy all the same (counted,
                # logged, in its tenant's audit trail), though no task was there to kill.
                self.bus.trip(call.task, call.agent, denied.trip, "kill", call.tenant)
            raise await self._refused(call, denied.trip, denied.first_call) from None
        for trip in grant.observed:
            self.bus.trip(call.task, call.agent, trip, "observe", call.tenant)
        if grant.view.overrides:  # limits of its own this process had not heard of
            self.budgets.note(call.task, grant.view.overrides)
        call.price = price
        return grant

    def _enforce(self, call: Call, grant: Grant) -> bytes:
        if call.body is None or not call.info.modelled:
            return call.raw
        # The upstream's cap field is for a kind whose adapter leaves the choice open.
        cap_field = call.info.cap_field or call.upstream.cap_field
        changed = call.adapter.enforce(call.body, call.info, grant.output_cap, cap_field)
        for hook in self.hooks.reserved:
            changed = hook(call, grant) or changed
        return jsonio.dumps(call.body) if changed else call.raw

    # -- send and relay ---------------------------------------------------------------------

    async def _forward(self, call: Call, grant: Grant, body: bytes) -> web.StreamResponse:
        call.sent = time.perf_counter()
        # A stream is on the kill board from before its request leaves: a kill while the
        # provider has not answered yet cuts it before its first byte reaches the client.
        early = _EarlyCut() if call.info.stream else None
        if early is not None:
            self.ledger.board.watch(call.task, early.cut, since=call.reserved_at)
        try:
            upstream = await self._send(call, grant, body)
            call.headers_at = time.perf_counter()
            try:
                content_type = upstream.headers.get("Content-Type", "")
                decoder = call.adapter.stream_decoder(call.info, upstream.status, content_type)
                if decoder is not None:
                    return await self._stream(call, grant, upstream, decoder, early)
                return await self._buffered(call, grant, upstream)
            finally:
                upstream.release()
        finally:
            if early is not None:
                self.ledger.board.unwatch(call.task, early.cut)

    async def _send(self, call: Call, grant: Grant, body: bytes) -> aiohttp.ClientResponse:
        try:
            return await self.upstream.send(call, body)
        except BaseException as exc:
            error = upstream_error(exc, call)
            status = error.status if isinstance(error, TripwireError) else 502
            await asyncio.shield(self._settle(call, grant, Usage(), outcome_of(error), status))
            raise error from exc

    async def _buffered(
        self, call: Call, grant: Grant, upstream: aiohttp.ClientResponse
    ) -> web.Response:
        try:
            data = await upstream.read()
        except BaseException as exc:
            error = upstream_error(exc, call)
            # The call line carries what the client gets: this error, not the provider's head.
            status = error.status if isinstance(error, TripwireError) else upstream.status
            await asyncio.shield(self._settle(call, grant, Usage(), outcome_of(error), status))
            raise error from exc
        received = time.perf_counter()
        ok = 200 <= upstream.status < 300
        content_type = upstream.headers.get("Content-Type", "")
        usage, output = answers.read_answer(call, ok, content_type, data)
        if usage is None:
            await self._counting()
            usage = answers.unreported_usage(call, grant.reserved_tokens)
        outcome = "ok" if ok else "provider_error"
        settled = await self._settle(call, grant, usage, outcome, upstream.status, output, received)
        headers = response_headers(upstream.headers)
        status, reason = upstream.status, upstream.reason
        verdict = None
        if output is not None and self.hooks.completed:
            verdict = await self._verdict(call, output)
        if verdict is not None and verdict.action == "kill" and verdict.trip is not None:
            raise await self._refused(call, verdict.trip)
        if verdict is not None and verdict.action == "block":
            # The provider's answer is replaced: the caller must not act on it.
            status, reason = verdict.status, None
            data = answers.blocked_body(call, verdict)
            headers["Content-Type"] = "application/json"
            headers["x-should-retry"] = "false"
            headers["X-Tripwire-Reason"] = verdict.reason
        overhead = (call.sent - call.started) + (time.perf_counter() - received)
        for hook in self.hooks.response_headers:
            hook(call, headers, settled.ledger.view, overhead)
        return web.Response(status=status, reason=reason, headers=headers, body=data)

    async def _stream(
        self,
        call: Call,
        grant: Grant,
        upstream: aiohttp.ClientResponse,
        decoder: StreamDecoder,
        early: _EarlyCut | None,
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers)
        for tag in self.hooks.response_headers:
            tag(call, headers, grant.view, call.sent - call.started)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(call.request)
        relay = StreamRelay(
            response,
            upstream,
            call.adapter.stream_tally(call.info),
            lambda trip: answers.refusal_event(call, trip, self.refuse_status),
            lambda: answers.broken_event(call),
            decoder=decoder,
            max_event=self.max_event,
        )
        _bound_output(call, grant, relay)
        held = self.hooks.holds(call)
        # The stream's closing events wait until the call is settled (and a held answer
        # judged): a client reading the end of the stream and calling again at once must find
        # a kill this answer caused already in place.
        relay.hold = call.adapter.closing_event(call.info) if held else _whole(relay.tally)
        close = _StreamClose(self, call, grant, relay, upstream.status, held)
        relay.release = close.release
        relay.closing = close.book
        relay.watch = self.hooks.watcher(call, relay.tally)
        self.ledger.board.watch(call.task, relay.cut, since=call.reserved_at)
        if early is not None and early.trip is not None:  # killed while the headers went out
            relay.cut(early.trip)
        for started in self.hooks.stream_started:
            started(call, grant, relay.cut)
        try:
            await relay.run()
        except Exception:
            # The headers are out, so no error answer can follow: drop the connection rather
            # than leave the client waiting for the rest of a stream that will never come.
            if call.request.transport is not None:
                call.request.transport.close()
            raise
        finally:
            close.end()
            try:
                await close.settle()  # left by the client, or ended without its usage
            finally:
                # The relay and its close refer to each other: apart, reference counting frees
                # the call's objects as it ends, not a garbage collection later.
                relay.release = relay.closing = None
        return response

    async def _settle_stream(
        self, call: Call, grant: Grant, relay: StreamRelay, status: int, outcome: str, judge: bool
    ) -> None:
        tally = relay.tally
        if tally.usage is None or not tally.usage.total or not tally.final:
            await self._counting()  # the prompt estimated, or the deltas seen counted
        usage = tally.billed_usage(answers.prompt_estimate(call) if tally.usage is None else 0)
        if not usage.total and tally.final and call.info.modelled:
            # Closing usage of nulls or strings: count the stream as if it sent none.
            tally.usage, tally.final = None, False
            usage = tally.billed_usage(answers.prompt_estimate(call))
            tally.final = True
        output = tally.output() if outcome == "ok" else None
        await asyncio.shield(self._settle(call, grant, usage, outcome, status, output))
        if output is not None and judge and self.hooks.completed:
            # An answer already on its way is judged all the same: for the task's next calls.
            await asyncio.shield(self._verdict(call, output))

    async def _counting(self) -> None:
        """The tokenizer, for a settle that counts what the provider did not report: loaded
        off the event loop if no budget has loaded it yet. If it cannot load, the counts fall
        back to their byte bounds (every token is at least one byte)."""
        if not tokens.loaded():
            with contextlib.suppress(TokenizerUnavailable):
                await self.intake.tokenizer.ready()

    # -- settle -----------------------------------------------------------------------------

    async def _settle(
        self,
        call: Call,
        grant: Grant,
        usage: Usage,
        outcome: str,
        status: int,
        output: Output | None = None,
        received: float | None = None,
    ) -> Settlement:
        """Book the call's usage and run the completion detectors; then the observers, then
        the trips (the figures first: a kill ends the task with them)."""
        cost = answers.cost_of(call.price, usage)
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
        settlement = Settlement(usage, cost, outcome, status, output, received, settled)
        self.hooks.settled(call, settlement)
        action = "kill" if settled.killed else "observe"
        for trip in settled.trips:
            self.bus.trip(call.task, call.agent, trip, action, call.tenant)
        return settlement

    async def _verdict(self, call: Call, output: Output) -> Intervention | None:
        for hook in self.hooks.completed:
            verdict = await hook(call, output)
            if verdict is not None:
                return verdict
        return None

    async def _held_verdict(self, call: Call, relay: StreamRelay) -> bytes | None:
        """What replaces a held answer's closing events: None delivers them. The stream is no
        longer watched for kills by then, so a verdict's own kill ends it with the event
        returned here, not as a cut."""
        verdict = await self._verdict(call, relay.tally.output())
        if verdict is None:
            return None
        if verdict.action == "block":
            return answers.blocked_event(call, verdict)
        if verdict.trip is not None:
            return answers.refusal_event(call, verdict.trip, self.refuse_status)
        return None


# Slack over a call's reserved output before its stream is cut: Tripwire counts with its own
# tokenizer, which may read a provider's output as a few more tokens than the provider did.
OUTPUT_TOLERANCE_PERCENT = 10
OUTPUT_TOLERANCE_TOKENS = 32


def _whole(tally: StreamTally) -> Callable[[SSEEvent], bool]:
    """Whether the stream's answer is whole: its closing event has come."""
    return lambda _: tally.final


def _bound_output(call: Call, grant: Grant, relay: StreamRelay) -> None:
    """Compare the stream's counted output with what the call reserved: a provider that
    ignores the forwarded cap is cut past it and the call billed what was counted. Only
    under a budget (the calls whose prompt is estimated): without one, no reservation can be
    overrun, and the stream's usage is read from its end rather than counted delta by delta."""
    reserved = grant.reserved_tokens - call.prompt_tokens
    if grant.policy.on_trip != "kill" or reserved <= 0 or not call.estimated:
        return  # shadow mode changes nothing; no output was reserved, so none is bounded
    relay.output_limit = (
        reserved + reserved * OUTPUT_TOLERANCE_PERCENT // 100 + OUTPUT_TOLERANCE_TOKENS
    )
    relay.tally.counting = True

    def over(counted: int) -> Trip:
        return BUDGET_TOKENS.trip(
            scope="the call's stream, past the output it reserved,",
            max_tokens=reserved,
            tokens_used=counted,
            tokens_reserved=0,
            tokens_left=0,
            prompt_tokens_estimate=call.prompt_tokens,
        )

    relay.over_limit = over


class _StreamClose:
    """How a relayed stream ends, once each: off the kill board, then booked. Booked before
    the closing events reach the client, its own (a whole answer's, held until then) or
    Tripwire's (a cut, a broken stream): a client that reads the end of the stream and calls
    again at once finds the call settled and any kill it caused in place."""

    __slots__ = ("call", "ended", "forwarder", "grant", "held", "relay", "settled", "status")

    def __init__(
        self,
        forwarder: Forwarder,
        call: Call,
        grant: Grant,
        relay: StreamRelay,
        status: int,
        held: bool,
    ) -> None:
        self.forwarder, self.call, self.grant, self.relay = forwarder, call, grant, relay
        self.status, self.held = status, held
        self.ended = self.settled = False

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.forwarder.ledger.board.unwatch(self.call.task, self.relay.cut)
            self.forwarder.hooks.stream_ended(self.call, self.relay.trip)

    async def settle(self) -> None:
        if not self.settled:
            self.settled = True
            outcome = self.relay.outcome(self.status)
            await self.forwarder._settle_stream(
                self.call, self.grant, self.relay, self.status, outcome, not self.held
            )

    async def book(self) -> None:
        """The answer is whole, cut or broken: a kill from here on, its own included, ends
        the task's next call, not this stream."""
        self.end()
        try:
            await self.settle()
        except Exception as exc:  # the answer is the provider's: it still reaches the client
            event("settle_failed", logging.ERROR, task=self.call.task, error=repr(exc))

    async def release(self) -> bytes | None:
        """What replaces a held answer's closing events (None: they go out as they are)."""
        await self.book()
        if not self.held:
            return None
        return await self.forwarder._held_verdict(self.call, self.relay)


class _EarlyCut:
    """A stream's place on the kill board until its relay takes over. The request is not
    dropped on a kill (the provider may have started billing it): its stream is cut as its
    relay starts, and what already arrived is counted."""

    __slots__ = ("trip",)

    def __init__(self) -> None:
        self.trip: Trip | None = None

    def cut(self, trip: Trip) -> None:
        if self.trip is None:
            self.trip = trip
