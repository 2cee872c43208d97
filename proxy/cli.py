"""Command line: argument parsing only; every command calls into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    server = {
        key: value
        for key, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
        )
        if value is not None
    }
    if server:
        # Flags override single settings; the rest of the file's server section stays.
        config = config.model_copy(update={"server": config.server.model_copy(update=server)})
    return config


def _serve(args: argparse.Namespace) -> int:
    from proxy.server.runner import run
    from proxy.telemetry.logs import setup_logging

    config = _config(args)
    setup_logging(config.logging.level, config.logging.format)
    run(config, mock=args.mock, load=lambda: _config(args))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    rules = len(config.policy.rules)
    print(f"configuration is valid: {len(config.upstreams)} upstreams, {rules} policy rules")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return int(run_demo())


def _replay(args: argparse.Namespace) -> int:
    from proxy.replay.cli import run_replay

    return run_replay(args)


def _dashboards_push(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from proxy.dashboards import PushError, push

    url = args.grafana_url or os.environ.get("GRAFANA_URL")
    if not url:
        print("tripwire: give --grafana-url or GRAFANA_URL", file=sys.stderr)
        return 2
    try:
        push(
            url,
            args.token or os.environ.get("GRAFANA_TOKEN"),
            folder=args.folder,
            directory=Path(args.dir) if args.dir else None,
            report=lambda done: print(f"{done.title}: {done.url}", flush=True),
        )
    except PushError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 1
    return 0


def _token(args: argparse.Namespace) -> int:
    from proxy.admin.commands import token

    return token(args)


def _tasks(args: argparse.Namespace) -> int:
    from proxy.admin.commands import tasks

    return tasks(args)


def _reload(args: argparse.Namespace) -> int:
    from proxy.admin.commands import reload

    return reload(args)


def _console(args: argparse.Namespace) -> int:
    from proxy.admin.commands import console

    return console(args)


def _duration(value: str) -> float:
    from proxy.config import parse_duration

    try:
        seconds = float(parse_duration(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive duration")
    return seconds


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, metavar="N", help="prompt + completion tokens")
    parser.add_argument(
        "--max-tokens-per-agent", type=int, metavar="N", help="tokens any one agent may use"
    )
    parser.add_argument("--max-cost-usd", type=float, metavar="USD", help="dollars, whole task")
    parser.add_argument("--max-calls", type=int, metavar="N", help="LLM calls, whole task")
    parser.add_argument("--max-hops", type=int, metavar="N", help="agent-to-agent hand-offs")
    parser.add_argument(
        "--max-duration", type=_duration, metavar="DURATION", help="e.g. 90s, 30m, 2h"
    )


def _add_admin_commands(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="mint a Tripwire token (an HS256 JWT) for an agent or an admin",
        description="Print a signed token. Its task, agent, tenant and limits win over anything "
        "a client sends; --role admin makes it a token for the admin API and `tripwire tasks`.",
    )
    secret = token.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret", help="the HS256 secret (auth.hs256_secret)")
    secret.add_argument("--secret-env", metavar="NAME", help="the variable holding the secret")
    token.add_argument("--sub", help="who holds the token; the actor in the audit trail")
    token.add_argument("--task", help="the task every call with this token belongs to")
    token.add_argument("--tenant", help="the tenant: its tasks, its provider keys")
    token.add_argument("--agent", help="the agent every call with this token comes from")
    token.add_argument("--owner", help="who is told when the task trips")
    token.add_argument(
        "--role",
        choices=["admin", "viewer", "metrics"],
        help="admin: may use the admin API; viewer: may read it (and the console) only; "
        "metrics: may scrape /metrics only",
    )
    _limit_flags(token)
    token.add_argument(
        "--ttl", type=_duration, default=3600.0, metavar="DURATION", help="lifetime (default 1h)"
    )
    token.add_argument("--issuer", help="the iss claim (auth.issuer)")
    token.add_argument("--audience", help="the aud claim (auth.audience)")
    token.set_defaults(run=_token)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="Tripwire's root URL (default: $TRIPWIRE_URL or http://127.0.0.1:8787)"
    )
    common.add_argument(
        "--token",
        help="an admin token (default: $TRIPWIRE_ADMIN_TOKEN, else the local admin token that "
        "`tripwire serve` writes with auth.mode none)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    tasks = commands.add_parser("tasks", help="list, show, kill, resume and extend tasks")
    actions = tasks.add_subparsers(dest="tasks_command", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help, parents=[common])
        parser.set_defaults(run=_tasks)
        return parser

    listing = action("list", "tasks with their figures, biggest spenders first")
    listing.add_argument(
        "--state", choices=["active", "killed", "all"], default="all", help="default: all"
    )
    listing.add_argument(
        "--sort",
        choices=["spend", "calls", "tokens", "age", "recent"],
        default="spend",
        help="default: spend",
    )
    listing.add_argument("--order", choices=["desc", "asc"], default="desc", help="default: desc")
    listing.add_argument("--limit", type=int, default=50, help="tasks per page (1-500)")
    listing.add_argument("--agent", help="only tasks this agent called in")
    listing.add_argument("--tenant", help="only this tenant's tasks (global admins)")
    listing.add_argument("--cursor", help="the next page, as printed by the previous one")
    show = action("show", "one task: figures, trip, last completions, timeline")
    show.add_argument("task", help="the task id")
    create = action("create", "register a task ahead of its first call, with limits and owner")
    create.add_argument("task", help="the task id its calls will carry")
    create.add_argument("--tenant", help="the task's tenant (global admins)")
    create.add_argument("--owner", help="who is told when the task trips")
    _limit_flags(create)
    kill = action("kill", "stop a task: its streams are cut, its later calls refused")
    kill.add_argument("task", help="the task id")
    kill.add_argument("--reason", required=True, help="why, for the refusals and the audit trail")
    resume = action("resume", "let a killed task call again, optionally with raised limits")
    resume.add_argument("task", help="the task id")
    _limit_flags(resume)
    resume.add_argument("--note", help="why, for the audit trail")
    extend = action("extend", "move a task's deadline later")
    extend.add_argument("task", help="the task id")
    extend.add_argument("--seconds", type=_duration, required=True, help="e.g. 600 or 10m")
    extend.add_argument("--note", help="why, for the audit trail")
    audit = action("audit", "the audit trail: trips, kills, resumes, budget changes")
    audit.add_argument("--task", help="only this task's events")
    audit.add_argument("--limit", type=int, default=20, help="events to show (default 20)")

    reload = commands.add_parser(
        "reload",
        parents=[common],
        help="make a running `tripwire serve` re-read its policy and tagging settings",
        description="Ask the running server (through its admin API) to read its config files "
        "again, as sending it SIGHUP does. The policy and the tagging settings take effect for "
        "the next calls; task state is kept. A file that does not load changes nothing and its "
        "error is printed. Other sections need a restart, and are named.",
    )
    reload.set_defaults(run=_reload)

    console = commands.add_parser(
        "console",
        help="print the console's link, signed in with the local admin token",
        description="Print (or open) the web console's address. On a local install "
        "(auth.mode none) the link carries the local admin token in its #fragment, which the "
        "browser keeps to itself: open it and the console is signed in for that tab.",
    )
    console.add_argument(
        "--url", help="Tripwire's root URL (default: $TRIPWIRE_URL or http://127.0.0.1:8787)"
    )
    console.add_argument("--open", action="store_true", help="open it in the default browser")
    console.set_defaults(run=_console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripwire", description="Observability proxy and circuit breaker for LLM agents."
    )
    parser.add_argument("--version", action="version", version=f"tripwire {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy until SIGINT or SIGTERM. SIGHUP (or `tripwire reload`) "
        "re-reads the policy and tagging settings without a restart.",
        epilog="Every setting of the config file can also be set by an environment variable: "
        "TRIPWIRE_ followed by its path in capitals, sections joined by a double underscore, "
        "e.g. TRIPWIRE_SERVER__PORT=9000, TRIPWIRE_STATE__BACKEND=redis, "
        "TRIPWIRE_STATE__REDIS_URL=redis://127.0.0.1:6379/0. The environment wins over the "
        "file; a misspelt variable stops start-up.",
    )
    check = commands.add_parser("check-config", help="validate the configuration and exit")
    for sub in (serve, check):
        sub.add_argument(
            "--config", help="YAML config file (default: rules/policy.yaml if present)"
        )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8787)")
    serve.add_argument(
        "--mock",
        action="store_true",
        help="send openai and anthropic traffic to a built-in mock provider (no API key needed)",
    )
    serve.set_defaults(run=_serve)
    check.set_defaults(run=_check_config)

    demo = commands.add_parser("demo", help="three runaway agents against a built-in mock provider")
    demo.set_defaults(run=_demo)

    from proxy.replay.args import add_arguments as add_replay_arguments

    replay = commands.add_parser(
        "replay", help="run the loop detectors over a recorded conversation"
    )
    add_replay_arguments(replay)
    replay.set_defaults(run=_replay)
    _add_admin_commands(commands)

    dashboards = commands.add_parser("dashboards", help="Grafana dashboards of Tripwire's metrics")
    dashboard_commands = dashboards.add_subparsers(dest="dashboards_command", required=True)
    push = dashboard_commands.add_parser(
        "push",
        help="create or update the dashboards in Grafana (safe to repeat)",
        description="Upload the dashboards of dashboards/ into a Grafana folder, replacing "
        "earlier uploads of the same dashboards.",
    )
    push.add_argument(
        "--grafana-url",
        metavar="URL",
        help="Grafana's root URL, e.g. http://127.0.0.1:3000 (default: $GRAFANA_URL)",
    )
    push.add_argument(
        "--token",
        metavar="TOKEN",
        help="a Grafana service account token with the Editor role (default: $GRAFANA_TOKEN)",
    )
    push.add_argument(
        "--folder", metavar="TITLE", default="Tripwire", help="Grafana folder (default: Tripwire)"
    )
    push.add_argument(
        "--dir",
        metavar="PATH",
        help="folder of dashboard JSON files (default: dashboards/ of this checkout)",
    )
    push.set_defaults(run=_dashboards_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
