"""One proxied call, as the core and the addons see it. Plain dataclasses: they live on the
hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from proxy.config import TagSource

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.auth import Claims
    from proxy.config import Upstream
    from proxy.detectors.base import Trip
    from proxy.policy.rules import Effective
    from proxy.pricing import Price
    from proxy.providers.base import Adapter, CallInfo, Output, Usage
    from proxy.session.base import Settled

# Where a call's task id came from: a header, the URL, a signed token, the caller's
# traceparent, or a fallback (a session of the credential's hash, the token's subject or the
# peer address).
TaskSource = TagSource


@dataclass(slots=True)
class Call:
    """One proxied call as it moves through the pipeline."""

    request: web.Request
    upstream_name: str
    upstream: Upstream
    adapter: Adapter
    path: str
    info: CallInfo
    task: str
    agent: str
    task_source: TaskSource
    policy: Effective  # the rule that applies, with a token's signed limits over it
    # The prompt's estimate, reserved with the call; 0 for a call no budget needed it for
    # (``estimated`` False) until an answer without usage needs it after all.
    prompt_tokens: int
    started: float  # perf_counter at arrival
    raw: bytes
    body: dict[str, Any] | None  # the parsed JSON body, for known kinds
    request_fingerprint: str | None
    price: Price | None = None
    claims: Claims | None = None  # from a verified Tripwire token
    reserved_at: float = 0.0  # wall clock when the ledger reserved the call
    sent: float = 0.0  # perf_counter when the call left for the provider
    headers_at: float = 0.0  # perf_counter when the provider's headers arrived
    # Untagged traffic: the client's identity the session was opened for, and when a killed
    # session ends (epoch seconds) once known.
    session_base: str | None = None
    session_start: int = 0
    session_ends: float | None = None
    # Per-call state an addon keeps between its hooks, under the addon's own key.
    notes: dict[str, Any] = field(default_factory=dict)
    # Headers an addon sets on the request to the provider (a trace's ``traceparent``); they
    # replace the caller's headers of the same name. Set by ``request`` or ``reserved``.
    upstream_headers: dict[str, str] | None = None
    estimated: bool = True  # ``prompt_tokens`` holds the prompt's estimate

    @property
    def tenant(self) -> str | None:
        return self.claims.tenant if self.claims is not None else None


@dataclass(slots=True)
class Settlement:
    """What the ledger booked for a call, and what the provider answered."""

    usage: Usage
    cost_usd: float
    outcome: str  # ok, provider_error, cut, client_disconnected, unreachable, timeout, ...
    status: int
    output: Output | None
    received: float | None  # perf_counter at the answer's last byte, for a buffered answer
    ledger: Settled


@dataclass(frozen=True, slots=True)
class Intervention:
    """An addon's verdict on a completed answer that replaces it: ``block`` answers the caller
    with an error of the call's format instead, ``kill`` refuses it as a killed task's call.
    The core renders either through the call's adapter."""

    action: Literal["block", "kill"]
    trip: Trip | None = None  # kill: the trip that killed the task
    message: str = ""  # block: the caller's error message
    status: int = 422  # block: the status of a blocked JSON answer
    reason: str = ""  # block: ``X-Tripwire-Reason``, and ``tripwire_<reason>`` as the code
