"""Escalation: when a task trips, tell its owner, with links to resume, extend or abort it.

The task's ``owner`` (from its token or from the admin API's ``create``) names an entry of
``escalation.owners``; with ``allow_any_url`` it may also be an ``http(s)://`` URL. Tasks
without an owner are not escalated. Only kills are escalated unless the settings say otherwise.

Each trip becomes one event, POSTed to the owner's webhook as JSON (``format: json``) or as a
Slack-compatible ``{"text": ...}`` message (``format: slack``). Every attempt of a delivery
carries the same ``id`` (``X-Tripwire-Event-Id``), so a receiver can drop the duplicates that
retries may cause.

Signature, for receivers to verify (``verify_signature`` does it):

    X-Tripwire-Timestamp: <unix seconds when the attempt was sent>
    X-Tripwire-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Compare in constant time and reject timestamps far from your clock (five minutes, say) so a
captured request cannot be replayed later. Without a configured secret, events go unsigned.

Delivery never touches the request path: the trip listener only schedules it. Connection
errors, timeouts, 429 and 5xx are retried with exponential backoff up to
``escalation.attempts``; any other answer is final. Every attempt is written to the audit
trail as a ``webhook`` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from proxy.audit import AuditEvent, AuditLog
from proxy.config import Escalation
from proxy.pipeline.bus import TripEvent
from proxy.session.base import Ledger, TaskView
from proxy.telemetry.logs import event

EVENT_TYPE = "tripwire.trip"
# A worker's status envelope under its confidence threshold: delivered, and put to its owner.
LOW_CONFIDENCE_EVENT = "tripwire.low_confidence"
ESCALATE = "escalate"
SIGNATURE_HEADER = "X-Tripwire-Signature"
TIMESTAMP_HEADER = "X-Tripwire-Timestamp"
EVENT_ID_HEADER = "X-Tripwire-Event-Id"
ADMIN_PREFIX = "/tripwire/v1/tasks"
MAX_PENDING = 1000
# One tenant's trips (or one owner's deliveries) may hold only this share of the queue, and one
# owner only this many sockets: a tenant whose owner URL hangs cannot delay or drop another
# tenant's kills.
MAX_PENDING_PER_TENANT = 100
MAX_PENDING_PER_OWNER = 100
# Sockets open at once; further attempts wait for a slot instead of piling onto the receiver.
MAX_CONCURRENT = 64
MAX_CONCURRENT_PER_OWNER = 8
BASE_DELAY_S = 0.5
MAX_DELAY_S = 30.0
# Pending deliveries get this long to finish at shutdown before they are cancelled.
CLOSE_GRACE_S = 1.0
MAX_ANSWER_BYTES = 64 * 1024
DEFAULT_EXTEND_S = 1800
SLACK_PREVIEWS = 3


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Tripwire-Signature`` value for one attempt."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# How far a signed timestamp may be from the receiver's clock: past it, a captured request
# replayed later is refused.
REPLAY_WINDOW_S = 300.0


def verify_signature(
    secret: str,
    timestamp: str | int,
    body: bytes | str,
    header: str | None,
    *,
    tolerance_s: float | None = REPLAY_WINDOW_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is Tripwire's signature of ``body`` sent at ``timestamp``.

    ``body`` must be the raw bytes received, not re-serialized JSON. A timestamp further than
    ``tolerance_s`` from ``now`` (default: the clock) is refused, so a captured request cannot
    be replayed later; ``tolerance_s=None`` turns that check off. Anything malformed (an empty
    secret, a timestamp that is not whole seconds, text that is not UTF-8) gives False, never
    an exception, and the comparison takes constant time.
    """
    if not secret or not isinstance(secret, str) or not isinstance(header, str) or not header:
        return False
    stamp = str(timestamp) if isinstance(timestamp, int | str) else ""
    # Digits only: a timestamp holding "." could move the timestamp/body split of the signed
    # text, so one signature would cover another body.
    if not stamp.isascii() or not stamp.isdigit():
        return False
    if tolerance_s is not None:
        clock = time.time() if now is None else now
        if abs(clock - int(stamp)) > tolerance_s:
            return False
    if isinstance(body, str):
        raw = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
    else:
        return False
    expected = sign(secret, stamp, raw).encode()
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    format: str  # json or slack
    owner: str  # the configured name, or "url" for an owner given as a URL

    @property
    def shown(self) -> str:
        """The URL as logs and the audit trail show it: its origin only. Webhook URLs often
        carry their credential in the path (Slack's always do), and the owner's name already
        says where the call went."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        path = "/..." if parts.path.strip("/") else ""
        return urlunsplit((parts.scheme, host, path, "", ""))


class Escalator:
    """Sends trips to task owners; ``listener`` subscribes to the trip bus."""

    def __init__(
        self,
        settings: Escalation,
        ledger: Ledger,
        audit: AuditLog,
        *,
        base_delay: float = BASE_DELAY_S,
        max_delay: float = MAX_DELAY_S,
        max_pending: int = MAX_PENDING,
        max_pending_per_tenant: int = MAX_PENDING_PER_TENANT,
        max_pending_per_owner: int = MAX_PENDING_PER_OWNER,
        actions: Collection[str] | None = None,
        jitter: bool = True,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.audit = audit
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_pending = max_pending
        self.max_pending_per_tenant = max_pending_per_tenant
        self.max_pending_per_owner = max_pending_per_owner
        # Observe-mode trips would page owners for shadow traffic unless asked for.
        chosen = actions if actions is not None else settings.on
        self.actions = frozenset(str(action) for action in chosen)
        self.jitter = jitter
        self.secret = settings.resolved_secret()
        self.public_url = (settings.public_url or "").rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._owner_slots: dict[str, asyncio.Semaphore] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._by_tenant: Counter[str | None] = Counter()
        self._by_owner: Counter[str] = Counter()
        self._notes: set[asyncio.Task[None]] = set()
        self._warned_unsigned = False
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self.settings.owners) or self.settings.allow_any_url

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONCURRENT, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            trust_env=False,
            headers={"User-Agent": "tripwire-escalation"},
        )
        self._closed = False

    async def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """Let deliveries under way finish for up to ``grace`` seconds, then cancel the rest."""
        self._closed = True
        waiting = self._pending | self._notes
        if waiting and grace > 0:
            await asyncio.wait(waiting, timeout=grace)
        left = [task for task in self._pending | self._notes if not task.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
            event("escalation_cancelled", logging.WARNING, deliveries=len(left))
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait(self) -> None:
        """Until every delivery scheduled so far has finished (for tests and the demo)."""
        while self._pending or self._notes:
            await asyncio.gather(*(self._pending | self._notes), return_exceptions=True)

    # -- the trip listener ------------------------------------------------------------------

    def listener(self, happened: TripEvent) -> None:
        """Schedule the delivery of one trip; returns at once and never raises."""
        try:
            # An escalation is asked for by the worker's rule itself, whatever ``on`` says.
            wanted = happened.action in self.actions or happened.action == ESCALATE
            if self._closed or not self.enabled or not wanted:
                return
            event_id = str(uuid.uuid4())
            tenant = happened.tenant
            if len(self._pending) >= self.max_pending:
                self._drop(happened, event_id, f"{len(self._pending)} deliveries already pending")
                return
            if self._by_tenant[tenant] >= self.max_pending_per_tenant:
                self._drop(
                    happened, event_id, f"{self._by_tenant[tenant]} of its tenant already pending"
                )
                return
            at = time.time()
            task = asyncio.get_running_loop().create_task(self._escalate(happened, event_id, at))
            self._pending.add(task)
            self._by_tenant[tenant] += 1
            task.add_done_callback(lambda done: self._finished(done, tenant))
        except Exception as exc:
            event("escalation_error", logging.ERROR, task=happened.task, error=repr(exc))

    def _finished(self, done: asyncio.Task[None], tenant: str | None) -> None:
        self._pending.discard(done)
        self._by_tenant[tenant] -= 1
        if self._by_tenant[tenant] <= 0:
            del self._by_tenant[tenant]

    def _drop(self, happened: TripEvent, event_id: str, why: str) -> None:
        event(
            "escalation_dropped",
            logging.ERROR,
            task=happened.task,
            tenant=happened.tenant,
            reason=str(happened.trip.reason),
            event_id=event_id,
            pending=len(self._pending),
            note=f"too many escalations pending ({why}); this trip is not sent to its owner",
        )
        if len(self._notes) >= self.max_pending:
            return
        note = AuditEvent(
            action="webhook",
            task=happened.task,
            actor="tripwire",
            tenant=happened.tenant,
            detail=f"failed: dropped, {why}",
            data={"attempt": 0, "status": None, "url": None, "event_id": event_id},
        )
        task = asyncio.get_running_loop().create_task(self._record(note))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    # -- one delivery -----------------------------------------------------------------------

    async def _escalate(self, happened: TripEvent, event_id: str, at: float) -> None:
        try:
            view = await self.ledger.get(happened.task)
        except Exception as exc:
            event("escalation_error", logging.ERROR, task=happened.task, error=repr(exc))
            return
        if view is None or not view.owner:
            return
        target = self._target(view.owner)
        if target is None:
            event(
                "escalation_owner_unknown",
                logging.WARNING,
                task=happened.task,
                owner=_shown_owner(view.owner),
                note="add it to escalation.owners",
            )
            await self._record(
                AuditEvent(
                    action="webhook",
                    task=happened.task,
                    actor="tripwire",
                    tenant=happened.tenant or view.tenant,
                    detail="failed: owner not configured",
                    data={
                        "attempt": 0,
                        "status": None,
                        "url": None,
                        "event_id": event_id,
                        "owner": _shown_owner(view.owner),
                    },
                )
            )
            return
        if self._by_owner[target.url] >= self.max_pending_per_owner:
            why = f"{self._by_owner[target.url]} deliveries to this owner already pending"
            self._drop(happened, event_id, why)
            return
        payload = self.payload(happened, view, event_id, at)
        message = payload if target.format == "json" else {"text": slack_text(payload)}
        body = json.dumps(message, default=str).encode()
        self._by_owner[target.url] += 1
        try:
            await self._deliver(target, body, happened, view, event_id)
        finally:
            self._by_owner[target.url] -= 1
            if self._by_owner[target.url] <= 0:
                # No delivery to this owner is under way: its slots go too (owners given as
                # URLs in tokens must not grow the map for ever).
                del self._by_owner[target.url]
                self._owner_slots.pop(target.url, None)

    def _target(self, owner: str) -> Target | None:
        named = self.settings.owners.get(owner)
        if named is not None:
            return Target(named.url, named.format, owner)
        if self.settings.allow_any_url and owner.startswith(("http://", "https://")):
            return Target(owner, "json", "url")
        return None

    async def _deliver(
        self, target: Target, body: bytes, happened: TripEvent, view: TaskView, event_id: str
    ) -> None:
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            status, error, retry_after = await self._attempt(target, body, event_id)
            delivered = status is not None and 200 <= status < 300
            retryable = error is not None or status == 429 or (status or 0) >= 500
            final = delivered or not retryable or attempt == attempts
            await self._record(
                AuditEvent(
                    action="webhook",
                    task=happened.task,
                    actor="tripwire",
                    tenant=happened.tenant or view.tenant,
                    detail="delivered" if delivered else f"failed: {error or f'HTTP {status}'}",
                    data={
                        "attempt": attempt,
                        "status": status,
                        "url": target.shown,
                        "event_id": event_id,
                        "owner": target.owner,
                        "final": final,
                    },
                )
            )
            if delivered:
                event(
                    "escalation_delivered",
                    logging.INFO,
                    task=happened.task,
                    owner=target.owner,
                    url=target.shown,
                    attempt=attempt,
                    event_id=event_id,
                )
                return
            event(
                "escalation_failed",
                logging.ERROR if final else logging.WARNING,
                task=happened.task,
                owner=target.owner,
                url=target.shown,
                attempt=attempt,
                attempts=attempts,
                status=status,
                error=error,
                final=final,
                event_id=event_id,
            )
            if final:
                return
            await asyncio.sleep(self._delay(attempt, retry_after))

    async def _attempt(
        self, target: Target, body: bytes, event_id: str
    ) -> tuple[int | None, str | None, float | None]:
        """One POST: (status, error, Retry-After seconds); error set when there was no answer."""
        session = self._session
        if session is None:
            return None, "escalation is not started", None
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event_id,
        }
        if self.secret:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = sign(self.secret, stamp, body)
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            event(
                "escalation_unsigned",
                logging.WARNING,
                note="escalation.secret is not set: webhooks are sent without a signature",
            )
        owner_slots = self._owner_slots.get(target.url)
        if owner_slots is None:
            owner_slots = self._owner_slots[target.url] = asyncio.Semaphore(
                MAX_CONCURRENT_PER_OWNER
            )
        try:
            # The owner's own slot first: waiting for it holds none of the shared ones.
            async with (
                owner_slots,
                self._slots,
                session.post(target.url, data=body, headers=headers, allow_redirects=False) as r,
            ):
                # Only the status matters; a receiver's large body is not worth reading.
                await r.content.read(MAX_ANSWER_BYTES)
                return r.status, None, _retry_after(r.headers.get("Retry-After"))
        except TimeoutError:
            return None, f"no answer within {self.settings.timeout:g}s", None
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {_short(str(exc))}", None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay)
        if self.jitter:
            delay *= 0.5 + random.random() / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay

    async def _record(self, entry: AuditEvent) -> None:
        try:
            await self.audit.record(entry)
        except Exception as exc:
            event("escalation_audit_failed", logging.ERROR, task=entry.task, error=repr(exc))

    # -- what is sent -----------------------------------------------------------------------

    def action_url(self, task: str, action: str) -> str:
        """Relative to the admin API's root unless ``escalation.public_url`` is set."""
        return f"{self.public_url}{ADMIN_PREFIX}/{quote(task, safe='')}/{action}"

    def payload(
        self, happened: TripEvent, view: TaskView, event_id: str, at: float
    ) -> dict[str, Any]:
        trip = happened.trip
        # A suggestion the owner edits: resuming needs a budget above what is already used.
        budget = 2 * max(view.max_tokens or 0, view.tokens_used, 500)
        extend_s = int(trip.figures.get("max_duration_s") or DEFAULT_EXTEND_S)
        payload: dict[str, Any] = {
            "event": LOW_CONFIDENCE_EVENT if happened.action == ESCALATE else EVENT_TYPE,
            "id": event_id,
            "at": _iso(at),
            "task": happened.task,
            "tenant": happened.tenant or view.tenant,
            "agent": happened.agent,
            "action": happened.action,
            "reason": str(trip.reason),
            "detail": trip.detail,
            "figures": trip.figures,
            "task_figures": {
                "tokens_used": view.tokens_used,
                "cost_usd": round(view.cost_usd, 6),
                "calls": view.calls,
                "hops": view.hops,
                "agents": list(view.agents),
            },
            "previews": [
                {"agent": p.agent, "fingerprint": p.fingerprint, "text": p.text}
                for p in view.previews
            ],
            "actions": {
                "resume": {
                    "method": "POST",
                    "url": self.action_url(happened.task, "resume"),
                    "body": {"limits": {"max_tokens": budget}},
                },
                "extend": {
                    "method": "POST",
                    "url": self.action_url(happened.task, "extend"),
                    "body": {"seconds": extend_s},
                },
                "abort": {
                    "method": "POST",
                    "url": self.action_url(happened.task, "kill"),
                    "body": {"reason": "aborted by its owner"},
                },
            },
        }
        if happened.envelope is not None:
            payload["envelope"] = happened.envelope
        return payload


def slack_text(payload: dict[str, Any]) -> str:
    """The event as one Slack message: what happened, the figures, the action links."""
    task, reason = _slack(payload["task"]), payload["reason"]
    if payload["action"] == "kill":
        head = f"Tripwire stopped task `{task}` ({reason}): {_slack(payload['detail'])}."
    elif payload["action"] == ESCALATE:
        head = (
            f"Tripwire asks the owner of task `{task}` to review an answer ({reason}): "
            f"{_slack(payload['detail'])}. The answer was delivered."
        )
    else:
        head = (
            f"Tripwire saw task `{task}` trip ({reason}) in observe mode, and let it run: "
            f"{_slack(payload['detail'])}."
        )
    used = payload["task_figures"]
    lines = [
        head,
        f"Tenant: {_slack(str(payload['tenant'] or '-'))}. Agent: {_slack(payload['agent'])}. "
        f"Used: {used['tokens_used']} tokens, ${used['cost_usd']:.4f}, {used['calls']} calls, "
        f"{used['hops']} hops.",
    ]
    for preview in payload["previews"][-SLACK_PREVIEWS:]:
        text = " ".join(preview["text"].split())
        lines.append(f"> {_slack(preview['agent'])}: {_slack(text)}")
    for name, label in (("resume", "Resume"), ("extend", "Extend"), ("abort", "Abort")):
        link = payload["actions"][name]
        lines.append(f"{label}: {link['method']} {link['url']} {json.dumps(link['body'])}")
    return "\n".join(lines)


def _slack(text: str) -> str:
    # Slack reads <...> as links and mentions; task names and outputs must stay plain text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(at: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_owner(owner: str) -> str:
    """An owner as logs show it: a URL given as owner may carry a credential, so only its
    origin appears."""
    if "://" in owner:
        parts = urlsplit(owner)
        return f"{parts.scheme}://{parts.hostname or ''}/..."
    return _short(owner, 128)
