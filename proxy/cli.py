"""Command line: argument parsing only; every command calls into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError


def _config(args: argparse.Namespace) -> Config:
    overrides = {}
    if getattr(args, "host", None) or getattr(args, "port", None) is not None:
        server = {}
        if args.host:
            server["host"] = args.host
        if args.port is not None:
            server["port"] = args.port
        overrides["server"] = server
    return load_config(args.config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.server.runner import serve
    from proxy.telemetry.logs import setup_logging

    config = _config(args)
    setup_logging(config.logging.level, config.logging.format)
    asyncio.run(serve(config, mock=args.mock))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    rules = len(config.policy.rules)
    print(f"configuration is valid: {len(config.upstreams)} upstreams, {rules} policy rules")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return int(run_demo())


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripwire", description="Observability proxy and circuit breaker for LLM agents."
    )
    parser.add_argument("--version", action="version", version=f"tripwire {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
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
