"""Workers' status envelopes as an addon: ask the provider for the envelope, and let the
confidence gate deliver, block or kill each completed answer.

- ``request``: the injected schema counts toward the prompt's estimate before reserving;
- ``reserved``: the request asks for the envelope (a JSON schema, or a forced tool);
- ``holds_answer``: a worker's stream keeps its closing events until the verdict;
- ``completed``: the gate's verdict (``proxy/envelopes/gate.py``) as an intervention.

In shadow mode (``on_trip: observe``) traffic is untouched: verdicts are counted only.
"""

from __future__ import annotations

from aiohttp import web

from proxy.config import Config
from proxy.envelopes.core import inject, injection_tokens
from proxy.envelopes.gate import BLOCK_REASON, BLOCK_STATUS, EnvelopeGate
from proxy.pipeline.bus import TripBus
from proxy.pipeline.call import Call, Intervention
from proxy.policy.rules import Effective
from proxy.providers.base import Output
from proxy.session.base import Grant, Ledger
from proxy.telemetry.record import Telemetry


def injects(policy: Effective) -> bool:
    """Whether a worker's envelope may change its traffic: not in shadow mode."""
    return policy.envelope is not None and policy.on_trip != "observe"


class Envelopes:
    name = "envelopes"

    def __init__(self, ledger: Ledger, telemetry: Telemetry, bus: TripBus) -> None:
        self.gate = EnvelopeGate(ledger, telemetry, bus)

    @classmethod
    def from_config(
        cls, config: Config, ledger: Ledger, telemetry: Telemetry, bus: TripBus
    ) -> Envelopes | None:
        """None when no rule makes its agents workers: the pipeline then skips this addon."""
        if all(rule.envelope is None for rule in config.policy.rules):
            return None
        return cls(ledger, telemetry, bus)

    async def request(self, call: Call) -> web.StreamResponse | None:
        settings = call.policy.envelope
        # Only a call that was estimated (a budget needs its prompt; the tokenizer is loaded)
        # counts what the injection adds: an estimate made later reads the body as sent.
        if settings is None or call.body is None or not call.estimated:
            return None
        if injects(call.policy):
            call.prompt_tokens += injection_tokens(call.body, call.info, settings)
        return None

    def reserved(self, call: Call, grant: Grant) -> bool:
        settings = grant.policy.envelope
        if settings is None or call.body is None or not injects(grant.policy):
            return False
        return inject(call.body, call.info, settings)

    def holds_answer(self, call: Call) -> bool:
        settings = call.policy.envelope
        return settings is not None and settings.may_withhold and injects(call.policy)

    async def completed(self, call: Call, output: Output) -> Intervention | None:
        if call.policy.envelope is None:
            return None
        decision = await self.gate.judge(call.task, call.agent, call.tenant, call.policy, output)
        if decision is None:
            return None
        call.notes["envelope"] = decision  # the verdict, for the call's trace
        if decision.action == "kill" and decision.trip is not None:
            return Intervention("kill", trip=decision.trip)
        if decision.action == "block":
            return Intervention(
                "block", message=decision.message, status=BLOCK_STATUS, reason=BLOCK_REASON
            )
        return None
