"""``tripwire demo``: three runaway agents, each run twice against the built-in mock provider.

Once straight to the provider, once through Tripwire, with the same agent code and only the
base URL changed, so the difference in calls and tokens is what Tripwire saved. Everything
runs in this process on free ports of 127.0.0.1: no network, no API key. The agents speak the
OpenAI chat completions format with plain aiohttp, as the ``openai`` SDK is not a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from proxy.app import LEDGER, build_app
from proxy.config import Config, Limits, Match, Policy, Rule, Upstream
from proxy.mock_provider import (
    CHAT_COMPLETIONS_PATH,
    HEADER_REPLY,
    HEADER_REPLY_TOKENS,
    MockProvider,
    start_mock_provider,
)
from proxy.pricing import PriceBook, cost_usd
from proxy.session.base import Ledger
from proxy.telemetry.logs import LOGGER_NAME

MODEL = "gpt-4o"
PLANNER_BUDGET = 20_000
WIDTH = 100
INDENT = 14

PINGPONG_TASK = "demo-pingpong"
ECHO_TASK = "demo-echo"
PLANNER_TASK = "demo-planner"

# The limits under demonstration are the defaults every deployment starts with; only the
# planner needs a rule, since tasks have no token budget by default.
DEMO_POLICY = Policy(
    rules=[
        Rule(
            name="demo planner budget",
            match=Match(task=PLANNER_TASK),
            limits=Limits(max_tokens=PLANNER_BUDGET),
        )
    ]
)


class DemoError(Exception):
    """The provider or the proxy answered in a way the demo's script does not expect."""


@dataclass(slots=True)
class Refusal:
    call: int
    status: int
    reason: str
    message: str


@dataclass(slots=True)
class Run:
    """One agent run, as the agent saw it and as the provider billed it."""

    calls: int = 0  # calls the agent made, the refused one included
    answered: int = 0
    prompt_tokens: int = 0  # from the ``usage`` of the answers
    completion_tokens: int = 0
    capped: list[tuple[int, int]] = field(default_factory=list)  # (call, output tokens)
    refusal: Refusal | None = None
    billed_calls: int = 0  # from the mock provider's own record
    billed_tokens: int = 0
    ledger_tokens: int | None = None  # what Tripwire booked for the task

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Stopped(Exception):
    """Tripwire refused a call: the agent's loop ends, as it would on the SDK's exception."""


class Client:
    """An agent's view of the LLM: POST the conversation, get the answer's text back."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, task: str, run: Run) -> None:
        self.session = session
        self.url = base_url + CHAT_COMPLETIONS_PATH
        self.task = task
        self.run = run

    async def ask(self, agent: str, messages: list[dict[str, str]], script: dict[str, str]) -> str:
        self.run.calls += 1
        headers = {"X-Task-Id": self.task, "X-Agent-Id": agent, **script}
        payload = {"model": MODEL, "messages": messages}
        async with self.session.post(self.url, json=payload, headers=headers) as response:
            status = response.status
            reason = response.headers.get("X-Tripwire-Reason")
            try:
                body = await response.json(content_type=None)
            except ValueError as exc:
                raise DemoError(f"call {self.run.calls} of {self.task}: no JSON body") from exc
        if reason is not None:
            message = str(body["error"]["message"])
            self.run.refusal = Refusal(self.run.calls, status, reason, message)
            raise Stopped(message)
        if status != 200:
            raise DemoError(f"call {self.run.calls} of {self.task} got HTTP {status}: {body}")
        usage = body["usage"]
        choice = body["choices"][0]
        self.run.answered += 1
        self.run.prompt_tokens += int(usage["prompt_tokens"])
        self.run.completion_tokens += int(usage["completion_tokens"])
        if choice["finish_reason"] == "length":
            self.run.capped.append((self.run.calls, int(usage["completion_tokens"])))
        return str(choice["message"]["content"])


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# -- the agents -----------------------------------------------------------------------------

PINGPONG_GOAL = "Write the rollout plan for moving the billing service to the new database."
PINGPONG_ROLES = {
    "planner": "You are the planner. Draft the plan, then hand it to the critic.",
    "critic": "You are the critic. Review the plan; hand it back until it is perfect.",
}


async def pingpong(client: Client, calls: int) -> None:
    """Each agent hands the task to the other after every answer, and neither ever agrees."""
    transcript: list[tuple[str, str]] = []
    for n in range(1, calls + 1):
        speaker = "planner" if n % 2 else "critic"
        if speaker == "planner":
            reply = f"Draft {n // 2 + 1} of the rollout plan, revised after critique {n // 2}."
        else:
            reply = f"Critique {n // 2}: draft {n // 2} still misses the rollback step. Revise."
        messages = [_message("system", PINGPONG_ROLES[speaker]), _message("user", PINGPONG_GOAL)]
        messages += [
            _message("assistant" if who == speaker else "user", text) for who, text in transcript
        ]
        answer = await client.ask(speaker, messages, {HEADER_REPLY: reply})
        transcript.append((speaker, answer))


ECHO_QUESTION = "The CI build fails with 'config.yaml not found'. Fix it."
ECHO_REPLY = "I could not find config.yaml. Let me search the repository again."
ECHO_NUDGE = "The build still fails. Try again."


async def echo(client: Client, calls: int) -> None:
    """A fixer agent stuck in a retry loop: every answer is the same apology."""
    messages = [_message("system", "You fix CI failures."), _message("user", ECHO_QUESTION)]
    for _ in range(calls):
        answer = await client.ask("fixer", messages, {HEADER_REPLY: ECHO_REPLY})
        messages += [_message("assistant", answer), _message("user", ECHO_NUDGE)]


# About 1,100 tokens, which lets the third call fit only partly in the 20,000-token budget, so
# the demo shows the output cap before the refusal.
PLANNER_BRIEF = "Plan the migration. Requirements:\n" + "\n".join(
    f"R{i}: the billing service keeps an audit trail of every change to invoice batch {i}."
    for i in range(1, 60)
)


async def planner(client: Client, calls: int) -> None:
    """A planner asked for ever longer plans, resending the whole transcript every time."""
    messages = [_message("system", "You are a thorough planner."), _message("user", PLANNER_BRIEF)]
    for _ in range(calls):
        answer = await client.ask("planner", messages, {HEADER_REPLY_TOKENS: "3000"})
        messages += [_message("assistant", answer), _message("user", "Expand the plan further.")]


@dataclass(frozen=True, slots=True)
class Scenario:
    title: str
    task: str
    calls: int  # how long the agent runs when nothing stops it
    agent: Callable[[Client, int], Awaitable[None]]


SCENARIOS = (
    Scenario(
        "Handoff ping-pong: a planner and a critic pass the task back and forth",
        PINGPONG_TASK,
        40,
        pingpong,
    ),
    Scenario("Echo loop: an agent gives the same answer on every retry", ECHO_TASK, 58, echo),
    Scenario(
        "Token-hungry planner: long answers on an ever-growing transcript",
        PLANNER_TASK,
        30,
        planner,
    ),
)


@dataclass(slots=True)
class Result:
    scenario: Scenario
    without: Run
    with_tripwire: Run
    trip: dict[str, Any] | None  # the fields of Tripwire's ``trip`` log event for the task


# -- running --------------------------------------------------------------------------------


class TripRecorder(logging.Handler):
    """Keeps the ``trip`` events Tripwire logs, by task, instead of writing them to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.trips: dict[str, dict[str, Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        # The kill is the story; shadow-mode detectors may report earlier on the same task.
        if (
            record.getMessage() == "trip"
            and isinstance(fields, dict)
            and fields.get("action") == "kill"
        ):
            self.trips.setdefault(str(fields.get("task")), fields)


class DemoConfig(Config):
    """Settings from the arguments only. ``TRIPWIRE_*`` variables outrank arguments in
    ``Config``, and one naming a real upstream would send the demo's calls to a paying
    provider."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_config(mock_url: str) -> Config:
    upstreams = {
        "openai": Upstream(base_url=mock_url, format="openai"),
        "anthropic": Upstream(base_url=mock_url, format="anthropic"),
    }
    return DemoConfig(upstreams=upstreams, policy=DEMO_POLICY)


async def _play(
    scenario: Scenario,
    session: aiohttp.ClientSession,
    base_url: str,
    provider: MockProvider,
    ledger: Ledger | None = None,
) -> Run:
    provider.reset()
    run = Run()
    with contextlib.suppress(Stopped):
        await scenario.agent(Client(session, base_url, scenario.task, run), scenario.calls)
    billed = provider.total_usage
    run.billed_calls = provider.total_hits
    run.billed_tokens = billed.total_tokens
    if ledger is not None:
        view = await ledger.get(scenario.task)
        run.ledger_tokens = view.tokens_used if view is not None else 0
    return run


async def play(recorder: TripRecorder) -> tuple[Config, list[Result]]:
    """Start the mock provider and the proxy, run every scenario with and without Tripwire."""
    mock_runner, provider, mock_url = await start_mock_provider("127.0.0.1", 0)
    try:
        config = demo_config(mock_url)
        app = build_app(config)
        runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            proxy_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            results = []
            async with aiohttp.ClientSession(trust_env=False) as session:
                for scenario in SCENARIOS:
                    without = await _play(scenario, session, mock_url, provider)
                    protected = await _play(scenario, session, proxy_url, provider, app[LEDGER])
                    trip = recorder.trips.get(scenario.task)
                    results.append(Result(scenario, without, protected, trip))
            return config, results
        finally:
            await runner.cleanup()
    finally:
        await mock_runner.cleanup()


def collect() -> tuple[Config, list[Result]]:
    """Run the demo with Tripwire's log lines held back; the trips are returned instead."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    recorder = TripRecorder()
    logger.handlers[:] = [recorder]
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        return asyncio.run(play(recorder))
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


# -- the report -----------------------------------------------------------------------------

Prices = Callable[[int, int], float]


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)


def _prices() -> Prices:
    price = PriceBook().lookup(MODEL, "openai")
    if price is None:
        return lambda prompt, completion: 0.0
    return lambda prompt, completion: cost_usd(price, prompt, completion)


def _labelled(label: str, text: str, style: Callable[[str], str] = str) -> list[str]:
    lines = textwrap.wrap(text, WIDTH - INDENT, break_on_hyphens=False) or [""]
    first = f"   {label:<{INDENT - 3}}{style(lines[0])}"
    return [first, *(" " * INDENT + style(line) for line in lines[1:])]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _stop_line(result: Result) -> str:
    run, trip = result.with_tripwire, result.trip or {}
    refusal = run.refusal
    if refusal is None:
        return f"not stopped: all {run.calls} calls went through"
    figures = trip.get("figures", {})
    where = ""
    if refusal.reason == "max_hops":
        where = f" at hop {figures.get('hops')}"
    elif refusal.reason == "repeat_output":
        where = f" after {run.answered} identical completions"
    elif refusal.reason == "budget_tokens":
        used, limit = figures.get("tokens_used", 0), figures.get("max_tokens", 0)
        where = f" with {used:,} of {limit:,} tokens used"
    return (
        f"call {refusal.call} of {result.scenario.calls} refused{where} "
        f"(HTTP {refusal.status}, {refusal.reason})"
    )


def _trip_line(trip: dict[str, Any]) -> str:
    keys = ("task", "agent", "reason", "action")
    return "event=trip " + " ".join(f"{key}={trip.get(key)}" for key in keys)


def _ledger_line(task: str, run: Run) -> str:
    booked = f"Tripwire booked {run.ledger_tokens:,} tokens to {task}"
    if run.ledger_tokens == run.billed_tokens:
        return booked + ", what the provider billed"
    return booked + f"; the provider billed {run.billed_tokens:,}"


def _scenario(index: int, result: Result, prices: Prices, style: Style) -> list[str]:
    without, protected = result.without, result.with_tripwire
    lines = ["", style.bold(f"{index}. {result.scenario.title}") + f"  [{result.scenario.task}]"]
    lines += _labelled("stopped", _stop_line(result), style.red)
    for call, tokens in protected.capped:
        lines += _labelled(
            "capped", f"call {call}: output cut to {tokens:,} tokens to fit the budget"
        )
    if protected.refusal is not None:
        lines += _labelled("403 body", protected.refusal.message)
    if result.trip is not None:
        lines += _labelled("trip log", _trip_line(result.trip))
    if protected.ledger_tokens is not None:
        lines += _labelled("ledger", _ledger_line(result.scenario.task, protected))
    cost_without = prices(without.prompt_tokens, without.completion_tokens)
    cost_with = prices(protected.prompt_tokens, protected.completion_tokens)
    rows = [
        ("without Tripwire", without.answered, without.tokens, cost_without),
        ("with Tripwire", protected.answered, protected.tokens, cost_with),
    ]
    lines.append(" " * 22 + f"{'calls':>8}{'tokens':>12}{'USD':>10}")
    lines += [
        f"   {label:<19}{calls:>8}{tokens:>12,}{cost:>10.4f}" for label, calls, tokens, cost in rows
    ]
    saved = without.tokens - protected.tokens
    lines.append(
        style.green(
            f"   {'saved':<19}{without.answered - protected.answered:>8}{saved:>12,}"
            f"{cost_without - cost_with:>10.4f}  {_percent(saved, without.tokens)} of the tokens"
        )
    )
    return lines


def render(config: Config, results: list[Result], style: Style) -> str:
    policy = config.policy
    intro = (
        "Each agent runs twice with the same code: straight to the provider, then through "
        f"Tripwire with its default policy (max_hops {policy.defaults.max_hops}, repeat "
        f"threshold {policy.repeat.threshold}) and a {PLANNER_BUDGET:,}-token budget for "
        f"{PLANNER_TASK}. Calls are those the provider answered, tokens the usage it "
        f"reported, cost in USD at {MODEL} prices."
    )
    lines = [
        style.bold("Tripwire demo: three runaway agents, one mock provider"),
        *textwrap.wrap(intro, WIDTH),
    ]
    prices = _prices()
    for index, result in enumerate(results, 1):
        lines += _scenario(index, result, prices, style)
    runs = [(r.without, r.with_tripwire) for r in results]
    tokens_without = sum(w.tokens for w, _ in runs)
    tokens_saved = tokens_without - sum(p.tokens for _, p in runs)
    calls_saved = sum(w.answered - p.answered for w, p in runs)
    cost_saved = sum(
        prices(w.prompt_tokens, w.completion_tokens) - prices(p.prompt_tokens, p.completion_tokens)
        for w, p in runs
    )
    stopped = sum(1 for _, p in runs if p.refusal is not None)
    total = (
        f"Total: {stopped} of {len(runs)} runaways stopped; saved {calls_saved} calls, "
        f"{tokens_saved:,} of {tokens_without:,} tokens "
        f"({_percent(tokens_saved, tokens_without)}), ${cost_saved:.2f}"
    )
    return "\n".join([*lines, "", style.bold(total)])


def _use_colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def run_demo() -> int:
    try:
        config, results = collect()
    except (DemoError, aiohttp.ClientError, OSError) as exc:
        print(f"tripwire demo: {exc}", file=sys.stderr)
        return 1
    print(render(config, results, Style(_use_colour())))
    return 0
