"""The exceptions Tripwire raises, and how each one reaches a client.

    TripwireError
    ├── ConfigError        bad configuration: start-up fails with the message
    ├── RouteError         no upstream serves this path (404)
    ├── AuthError          a missing or invalid Tripwire token (401)
    ├── BadRequest         the body cannot be read as the provider's format (400)
    ├── Refused            policy refused the call: task killed or a limit reached (403 default)
    ├── UnboundedCall      a path whose cost cannot be bounded, under a budget (403)
    ├── BudgetBusy         the budget left is reserved by calls in flight: retry shortly (429)
    ├── StateUnavailable   the shared state (Redis) does not answer, fail-closed mode (503)
    ├── TokenizerUnavailable  the tokenizer a budget's prompt estimate needs did not load (503)
    └── UpstreamError      the provider could not be reached (502) or timed out (504)

Each class says its status, error code, log level and ``kind``: a name of the problem that
every provider adapter maps to its own error ``type`` (``Adapter.error_types``), so the server
renders each error in the caller's provider format without knowing any format. No aiohttp here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.detectors.base import Trip


class TripwireError(Exception):
    status = 500
    code = "tripwire_error"
    kind = "internal"
    log_level = "error"
    outcome = ""  # what a refused call is counted as; the code when empty
    retry = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TripwireError):
    code = "config_error"


class RouteError(TripwireError):
    status = 404
    code = "not_found"
    kind = "not_found"
    log_level = "info"


class AuthError(TripwireError):
    """A missing, invalid or insufficient Tripwire token."""

    status = 401
    code = "tripwire_unauthorized"
    kind = "unauthorized"
    log_level = "info"


class Forbidden(TripwireError):
    """A verified caller asking for what its configuration does not allow."""

    status = 403
    code = "tripwire_forbidden"
    kind = "forbidden"
    log_level = "info"
    outcome = "forbidden"


class BadRequest(TripwireError):
    status = 400
    code = "invalid_request"
    kind = "invalid_request"
    log_level = "info"


class Refused(TripwireError):
    """A call the policy will not forward. ``status`` comes from ``policy.refuse_status``."""

    code = "tripwire_task_killed"
    kind = "refused"
    log_level = "info"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str,
        task: str,
        agent: str,
        figures: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.task = task
        self.agent = agent
        self.figures = figures or {}


class UnboundedCall(TripwireError):
    """A call whose cost Tripwire cannot bound (a path it does not model) under a token or
    dollar budget: refused unless ``unbounded_paths`` lets the path through."""

    status = 403
    code = "tripwire_unbounded_path"
    kind = "refused"
    log_level = "info"
    outcome = "unbounded_path"


class BudgetBusy(TripwireError):
    """The task's remaining budget is held by its calls in flight; retrying soon will fit."""

    status = 429
    code = "tripwire_budget_busy"
    kind = "busy"
    log_level = "info"
    retry = True
    retry_after_s = 1
    outcome = "budget_busy"


class StateUnavailable(TripwireError):
    """The shared state store does not answer and ``on_state_error`` is ``closed``."""

    status = 503
    code = "tripwire_state_unavailable"
    kind = "unavailable"
    log_level = "warning"
    retry = True
    outcome = "state_unavailable"


class TokenizerUnavailable(TripwireError):
    """The tokenizer, which a call under a token or dollar budget needs for its prompt
    estimate, could not be loaded: the call is refused rather than forwarded unbounded. The
    next call that needs it tries the load again."""

    status = 503
    code = "tripwire_tokenizer_unavailable"
    kind = "unavailable"
    log_level = "error"
    retry = True
    outcome = "tokenizer_unavailable"


class UpstreamError(TripwireError):
    status = 502
    code = "upstream_unreachable"
    kind = "upstream"
    log_level = "warning"
    # The provider never answered: retrying is what the SDKs would do anyway, so let them.
    retry = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    kind = "timeout"


def refusal_reason(error: TripwireError) -> str:
    """The reason a call refused with this error is counted under."""
    if isinstance(error, Refused):
        return error.reason
    return error.outcome or error.code


def refusal_message(task: str, trip: Trip) -> str:
    figures = ", ".join(
        f"{k}={v}" for k, v in trip.figures.items() if k not in ("fingerprint", "scope")
    )
    text = f"Tripwire stopped task '{task}' ({trip.reason}): {trip.detail}."
    if figures:
        text += f" Figures: {figures}."
    return text + " Further calls of this task are refused."


def session_refusal(task: str, trip: Trip, ends: float, now: float) -> str:
    """The refusal of a killed session of untagged traffic: it ends, and calls flow again."""
    text = refusal_message(task, trip).removesuffix(" Further calls of this task are refused.")
    when = time.strftime("%H:%M:%S UTC", time.gmtime(ends))
    wait = max(ends - now, 0.0)
    return (
        f"{text} This session of untagged calls ends at {when} (in {wait:.0f} s): calls are "
        "accepted again from then, as a new session. Send an X-Task-Id header to name tasks "
        "yourself."
    )


def first_call_message(task: str, trip: Trip) -> str:
    """The refusal of a task's first call: the task was not started, so nothing is killed."""
    text = refusal_message(task, trip).removesuffix(" Further calls of this task are refused.")
    text = text.replace("Tripwire stopped task", "Tripwire refused the first call of task", 1)
    return text + " The task was not started and nothing was charged."


def refused_by(
    trip: Trip, task: str, agent: str, status: int, *, first_call: bool = False
) -> Refused:
    """The refusal of a call of a task this trip killed (or, ``first_call``, of a task's first
    call, which left no task behind)."""
    return Refused(
        first_call_message(task, trip) if first_call else refusal_message(task, trip),
        status=status,
        reason=str(trip.reason),
        task=task,
        agent=agent,
        figures=trip.figures,
    )
