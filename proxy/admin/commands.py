"""``tripwire token`` and ``tripwire tasks ...``: minting tokens and driving the admin API."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import ValidationError

from proxy.admin.client import AdminError, check_url, request, task_path
from proxy.admin.local import FILE_ENV, read_token, token_path
from proxy.auth import Claims, mint
from proxy.config import Limits, check_hs256_secret

DEFAULT_URL = "http://127.0.0.1:8787"
LIMIT_FLAGS = (
    "max_tokens",
    "max_tokens_per_agent",
    "max_cost_usd",
    "max_calls",
    "max_hops",
    "max_duration",
)


def _fail(message: str, code: int = 1) -> int:
    print(f"tripwire: {message}", file=sys.stderr)
    return code


def limits_of(args: argparse.Namespace) -> dict[str, Any]:
    """The limit flags given on the command line, checked by the policy's own model."""
    given = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
    checked = Limits.model_validate(given)
    return {name: getattr(checked, name) for name in given}


# -- tripwire token ------------------------------------------------------------------------


def token(args: argparse.Namespace) -> int:
    secret = args.secret
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            return _fail(f"the environment variable {args.secret_env} is empty or not set", 2)
    assert secret is not None  # argparse requires one of the two
    try:
        check_hs256_secret(secret, "the secret")
    except ValueError as exc:
        return _fail(str(exc), 2)
    claims: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("sub", "tenant", "task", "agent", "owner", "role")
        if getattr(args, name) is not None
    }
    try:
        limits = limits_of(args)
        if limits:
            claims["limits"] = limits
        Claims.model_validate(claims)
    except ValidationError as exc:
        item = exc.errors()[0]
        where = ".".join(str(part) for part in item["loc"])
        return _fail(f"{where}: {item['msg']}", 2)
    registered: dict[str, Any] = {}
    if args.issuer:
        registered["iss"] = args.issuer
    if args.audience:
        registered["aud"] = args.audience
    if "limits" in claims and "task" not in claims:
        # Limits with no task bind to the token (``Claims.bound_task``): name it by a jti.
        registered["jti"] = secrets.token_hex(8)
        print(
            f"note: no --task given, so these limits bind to the token itself (task "
            f"'token-{registered['jti']}'): every call made with it shares one budget, "
            "whatever X-Task-Id or URL it names",
            file=sys.stderr,
        )
    print(mint(secret, claims, args.ttl, **registered))
    return 0


# -- tripwire tasks ------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d {seconds % 86400 // 3600:02.0f}h"


def _tokens(task: dict[str, Any]) -> str:
    used = f"{task['tokens_used']:,}"
    return f"{used}/{task['max_tokens']:,}" if task.get("max_tokens") is not None else used


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(tasks: list[dict[str, Any]]) -> str:
    header = ("TASK", "STATE", "TOKENS", "COST", "CALLS", "HOPS", "AGENTS", "TRIP")
    rows = [header]
    for task in tasks:
        trip = task.get("trip")
        rows.append(
            (
                _short(task["task"], 40),
                task["state"],
                _tokens(task),
                f"${task['cost_usd']:.4f}",
                str(task["calls"]),
                str(task["hops"]),
                _short(",".join(task["agents"]) or "-", 30),
                trip["reason"] if trip else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def render_detail(task: dict[str, Any]) -> str:
    now = time.time()
    lines = [f"task      {task['task']}"]
    if task["key"] != task["task"] or task.get("tenant"):
        lines.append(f"key       {task['key']} (tenant {task.get('tenant') or '-'})")
    trip = task.get("trip")
    if trip:
        lines.append(f"state     killed ({trip['reason']}): {trip['detail']}")
        if trip.get("figures"):
            figures = ", ".join(f"{k}={v}" for k, v in trip["figures"].items())
            lines.append(f"figures   {figures}")
    else:
        lines.append("state     active")
    if task.get("owner"):
        lines.append(f"owner     {task['owner']}")
    tokens = f"{task['tokens_used']:,} used, {task['tokens_reserved']:,} reserved"
    if task.get("max_tokens") is not None:
        tokens += f", {task['tokens_left']:,} left of {task['max_tokens']:,}"
    lines += [
        f"tokens    {tokens}",
        f"cost      ${task['cost_usd']:.4f}",
        f"calls     {task['calls']}",
        f"hops      {task['hops']}",
        f"agents    {', '.join(task['agents']) or '-'}",
        f"age       {_ago(task['age_s'])} (last seen {_ago(now - task['last_seen'])} ago)",
    ]
    if task.get("limits"):
        limits = ", ".join(f"{k}={v:g}" for k, v in sorted(task["limits"].items()))
        lines.append(f"limits    {limits}")
    if task.get("extra_duration_s"):
        lines.append(f"extended  {task['extra_duration_s']:g}s past the policy's deadline")
    lines += _envelope_lines(task)
    if task.get("previews"):
        lines.append("last completions:")
        for preview in task["previews"]:
            text = " ".join(preview["text"].split())
            lines.append(f"  {preview['agent']}  {preview['fingerprint'][:12]}  {_short(text, 80)}")
    if task.get("timeline"):
        lines.append("timeline:")
        for entry in task["timeline"]:
            lines.append(f"  {_stamp(entry['at'])}  {entry['kind']:<8} {entry['detail']}")
    return "\n".join(lines)


def _envelope_lines(task: dict[str, Any]) -> list[str]:
    counts = task.get("envelopes") or {}
    if not counts:
        return []
    return ["envelopes " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]


def _budget_changes(data: dict[str, Any]) -> str:
    limits = data.get("limits") or {}
    before = data.get("previous_limits") or {}
    changes = []
    for name, value in sorted(limits.items()):
        previous = before.get(name)
        if previous is None and name == "max_tokens":
            previous = data.get("previous_max_tokens")
        was = f"{previous:g}" if isinstance(previous, int | float) else "-"
        changes.append(f"{name} {was} -> {value:g}")
    return ", ".join(changes)


def render_audit(events: list[dict[str, Any]]) -> str:
    lines = []
    for entry in events:
        who = entry["actor"] + (f"@{entry['tenant']}" if entry.get("tenant") else "")
        line = f"{_stamp(entry['at'])}  {entry['action']:<8} {entry['task']}  by {who}"
        if entry.get("detail"):
            line += f": {entry['detail']}"
        changes = _budget_changes(entry.get("data") or {})
        if changes:
            line += f" [{changes}]"
        lines.append(line)
    return "\n".join(lines) or "no events"


def _connection(args: argparse.Namespace) -> tuple[str, str, bool] | None:
    """The URL, the token, and whether the token is the local one read from its file."""
    url = args.url or os.environ.get("TRIPWIRE_URL") or DEFAULT_URL
    admin_token = args.token or os.environ.get("TRIPWIRE_ADMIN_TOKEN")
    if admin_token:
        return url, admin_token, False
    local = read_token(token_path())
    return (url, local, True) if local else None


def _no_token_message() -> str:
    path = token_path()
    where = f"in {path}" if path is not None else f"(${FILE_ENV} is empty)"
    return (
        f"no admin token: none given with --token or TRIPWIRE_ADMIN_TOKEN, and no local admin "
        f"token {where}. A local `tripwire serve` with auth.mode none writes one at start-up; "
        f"with auth.mode jwt, mint one: tripwire token --secret-env <VAR> --role admin --sub <you>"
    )


def _refused_message(error: AdminError, local: bool) -> str:
    if local:
        return (
            f"{error}. The local admin token ({token_path()}) is accepted only by a "
            "`tripwire serve` with auth.mode none that uses the same file: for this one give "
            "--token or TRIPWIRE_ADMIN_TOKEN (tripwire token --secret-env <VAR> --role admin)"
        )
    if error.status == 401:
        return f"{error}. Check the token's expiry and signing key, or mint a new one: " + (
            "tripwire token --secret-env <VAR> --role admin --sub <you>"
        )
    return f"{error}. `tasks` needs a token with the admin role (mint one with --role admin)"


def console(args: argparse.Namespace, out: TextIO | None = None) -> int:
    url = (args.url or os.environ.get("TRIPWIRE_URL") or DEFAULT_URL).rstrip("/")
    bad_url = check_url(url)
    if bad_url is not None:
        return _fail(bad_url, 2)
    link = f"{url}/tripwire/ui/"
    local = read_token(token_path())
    if local:
        link += f"#token={local}"
    else:
        print(
            "tripwire: no local admin token found; the console will ask for an admin or "
            "viewer token",
            file=sys.stderr,
        )
    print(link, file=out or sys.stdout)
    if args.open:
        import webbrowser

        webbrowser.open(link)
    return 0


_Api = Callable[..., Any]


def _list(args: argparse.Namespace, api: _Api) -> tuple[Any, str]:
    params = {"state": args.state, "sort": args.sort, "order": args.order, "limit": str(args.limit)}
    for name in ("agent", "tenant", "cursor"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    page = api("GET", "/tasks", params=params)
    text = render_table(page["tasks"]) if page["tasks"] else "no tasks"
    if page.get("next_cursor"):
        text += f"\n(more: --cursor {page['next_cursor']})"
    return page, text


def _audit(args: argparse.Namespace, api: _Api) -> tuple[Any, str]:
    params = {"limit": str(args.limit)}
    if args.task:
        params["task"] = args.task
    found = api("GET", "/audit", params=params)
    return found, render_audit(found["events"])


def _show(args: argparse.Namespace, api: _Api) -> tuple[Any, str]:
    task = api("GET", task_path(args.task))
    return task, render_detail(task)


def _create(args: argparse.Namespace, api: _Api) -> tuple[Any, str]:
    body: dict[str, Any] = {"task": args.task}
    if args.tenant:
        body["tenant"] = args.tenant
    if args.owner:
        body["owner"] = args.owner
    limits = limits_of(args)
    if limits:
        body["limits"] = limits
    task = api("POST", "/tasks", body=body)
    return task, f"created task {task['task']}\n" + render_detail(task)


def _action(args: argparse.Namespace, api: _Api) -> tuple[Any, str]:
    command = args.tasks_command
    body: dict[str, Any] = {}
    if command == "kill":
        body["reason"] = args.reason
    elif command == "resume":
        limits = limits_of(args)
        if limits:
            body["limits"] = limits
    elif command == "extend":
        body["seconds"] = args.seconds
    if getattr(args, "note", None):
        body["note"] = args.note
    task = api("POST", task_path(args.task, command), body=body)
    done = {"kill": "killed", "resume": "resumed", "extend": "extended"}[command]
    return task, f"{done} task {task['task']}\n" + render_detail(task)


_COMMANDS = {
    "list": _list,
    "audit": _audit,
    "show": _show,
    "create": _create,
    "kill": _action,
    "resume": _action,
    "extend": _action,
}


def reload(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``tripwire reload``: the running server re-reads its policy; print what changed."""
    bad_url = check_url(args.url or os.environ.get("TRIPWIRE_URL") or DEFAULT_URL)
    if bad_url is not None:
        return _fail(bad_url, 2)
    connection = _connection(args)
    if connection is None:
        return _fail(_no_token_message(), 2)
    url, admin_token, local = connection
    try:
        data = request(url, admin_token, "POST", "/reload")
    except AdminError as exc:
        if exc.status in (401, 403):
            return _fail(_refused_message(exc, local))
        return _fail(str(exc))
    if args.json:
        text = json.dumps(data, indent=2)
    else:
        lines = [f"changed {line}" for line in data.get("changed") or []] or ["no changes"]
        lines += [
            f"not applied, needs a restart: {section}"
            for section in data.get("restart_needed") or []
        ]
        text = "\n".join(lines)
    print(text, file=out or sys.stdout)
    return 0


def tasks(args: argparse.Namespace, out: TextIO | None = None) -> int:
    bad_url = check_url(args.url or os.environ.get("TRIPWIRE_URL") or DEFAULT_URL)
    if bad_url is not None:
        return _fail(bad_url, 2)
    connection = _connection(args)
    if connection is None:
        return _fail(_no_token_message(), 2)
    url, admin_token, local = connection

    def api(method: str, path: str, **options: Any) -> Any:
        return request(url, admin_token, method, path, **options)

    try:
        data, text = _COMMANDS[args.tasks_command](args, api)
    except ValidationError as exc:
        item = exc.errors()[0]
        return _fail(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}", 2)
    except AdminError as exc:
        if exc.status in (401, 403):
            return _fail(_refused_message(exc, local))
        return _fail(str(exc))
    print(json.dumps(data, indent=2) if args.json else text, file=out or sys.stdout)
    return 0
