"""The exceptions Tripwire raises, and how each one reaches a client.

    TripwireError
    ├── ConfigError        bad configuration: start-up fails with the message
    ├── RouteError         no upstream serves this path (404)
    ├── AuthError          a missing or invalid Tripwire token (401)
    ├── BadRequest         the body cannot be read as the provider's format (400)
    ├── Refused            policy refused the call: task killed or a limit reached (403 default)
    ├── BudgetBusy         the budget left is reserved by calls in flight: retry shortly (429)
    ├── StateUnavailable   the shared state (Redis) does not answer, fail-closed mode (503)
    └── UpstreamError      the provider could not be reached (502) or timed out (504)

The server renders each as an error body in the caller's provider format; ``ERROR_TABLE`` is the
single place that says which status, error code and log level each one gets. No aiohttp here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TripwireError(Exception):
    status = 500
    code = "tripwire_error"
    retry = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TripwireError):
    code = "config_error"


class RouteError(TripwireError):
    status = 404
    code = "not_found"


class AuthError(TripwireError):
    """A missing, invalid or insufficient Tripwire token."""

    status = 401
    code = "tripwire_unauthorized"


class BadRequest(TripwireError):
    status = 400
    code = "invalid_request"


class Refused(TripwireError):
    """A call the policy will not forward. ``status`` comes from ``policy.refuse_status``."""

    code = "tripwire_task_killed"

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


class BudgetBusy(TripwireError):
    """The task's remaining budget is held by its calls in flight; retrying soon will fit."""

    status = 429
    code = "tripwire_budget_busy"
    retry = True
    retry_after_s = 1


class StateUnavailable(TripwireError):
    """The shared state store does not answer and ``on_state_error`` is ``closed``."""

    status = 503
    code = "tripwire_state_unavailable"
    retry = True


class UpstreamError(TripwireError):
    status = 502
    code = "upstream_unreachable"
    # The provider never answered: retrying is what the SDKs would do anyway, so let them.
    retry = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How an error is presented: the provider error ``type`` per format, and the log level."""

    openai_type: str
    anthropic_type: str
    log_level: str


ERROR_TABLE: dict[type[TripwireError], ErrorKind] = {
    RouteError: ErrorKind("invalid_request_error", "not_found_error", "info"),
    BadRequest: ErrorKind("invalid_request_error", "invalid_request_error", "info"),
    AuthError: ErrorKind("invalid_request_error", "authentication_error", "info"),
    Refused: ErrorKind("tripwire_error", "permission_error", "info"),
    BudgetBusy: ErrorKind("rate_limit_error", "rate_limit_error", "info"),
    StateUnavailable: ErrorKind("server_error", "overloaded_error", "warning"),
    UpstreamTimeout: ErrorKind("server_error", "timeout_error", "warning"),
    UpstreamError: ErrorKind("server_error", "api_error", "warning"),
    TripwireError: ErrorKind("server_error", "api_error", "error"),
}


def kind_of(error: TripwireError) -> ErrorKind:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[TripwireError]
