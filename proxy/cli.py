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
