"""Configuration: pydantic models, loaded once at start-up and passed down.

Sources, lowest precedence first: built-in defaults, the YAML file (``--config``, or
``rules/policy.yaml`` when present), then ``TRIPWIRE_*`` environment variables with ``__``
between nested keys (``TRIPWIRE_SERVER__PORT=9000``). Every model forbids unknown keys: a typo in
a budget key must fail start-up, not silently disable a limit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from proxy.detectors.settings import (
    CycleSettings,
    NearDuplicateSettings,
    NoProgressSettings,
    ToolLoopSettings,
)
from proxy.envelopes.settings import EnvelopeSettings
from proxy.errors import ConfigError

DEFAULT_POLICY_PATH = Path("rules/policy.yaml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as ``"90s"``, ``"30m"``, ``"1.5h"``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 2h)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(Strict):
    """Per-task limits. ``None`` means unlimited; a rule only overrides the fields it sets."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_tokens_per_agent: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_calls: int | None = Field(default=None, ge=1)
    max_hops: int | None = Field(default=None, ge=0)
    max_duration: Seconds | None = None


DEFAULT_LIMITS = Limits(max_calls=200, max_hops=12, max_duration=1800.0)


class RepeatSettings(Strict):
    """Repeated-output and repeated-request loops."""

    threshold: int = Field(default=3, ge=2)
    window: int = Field(default=20, ge=2, le=1000)


TagSource = Literal["header", "path", "token", "traceparent", "fallback"]


class Match(Strict):
    task: str = "*"
    agent: str = "*"
    # How the call's task was named; unset: any. ``fallback`` is untagged traffic (a session
    # of a credential's hash, a token's subject or a peer address).
    source: TagSource | None = None


TripAction = Literal["kill", "observe"]


FaultName = Literal[
    "rate_limit",
    "server_error",
    "overloaded",
    "timeout",
    "stream_stall",
    "stream_break",
    "malformed",
]
FAULTS: tuple[FaultName, ...] = (
    "rate_limit",
    "server_error",
    "overloaded",
    "timeout",
    "stream_stall",
    "stream_break",
    "malformed",
)


class ChaosSettings(Strict):
    """Fault injection: Tripwire answers some calls with a provider failure of its own making,
    so a team can watch its orchestrator cope. Refused unless the config sets ``allow_chaos``."""

    probability: float = Field(ge=0, le=1)
    faults: tuple[FaultName, ...] = Field(default=FAULTS, min_length=1)
    # Only calls that carry ``X-Tripwire-Chaos`` are eligible: test traffic opts in per request.
    header_opt_in: bool = False
    retry_after: int = Field(default=1, ge=0, le=3600)  # seconds, on an injected 429 or 503
    stall: Seconds = 10.0  # how long a timeout or a stalled stream holds the call


class Rule(Strict):
    """A policy rule: every rule whose globs match a call applies, later rules win per field."""

    name: str | None = None
    match: Match = Match()
    limits: Limits = Limits()
    repeat: RepeatSettings | None = None
    cycle: CycleSettings | None = None
    near_duplicate: NearDuplicateSettings | None = None
    no_progress: NoProgressSettings | None = None
    tool_loop: ToolLoopSettings | None = None
    on_trip: TripAction | None = None
    chaos: ChaosSettings | None = None
    # The agents this rule matches are workers: their answers must be status envelopes.
    envelope: EnvelopeSettings | None = None
    # Paths this rule's tasks may call under a budget although their cost cannot be bounded.
    unbounded_paths: tuple[str, ...] = ()


class Policy(Strict):
    defaults: Limits = DEFAULT_LIMITS
    repeat: RepeatSettings = RepeatSettings()
    # Loops that are not word for word; each has its own action, ``observe`` by default.
    cycle: CycleSettings = CycleSettings()
    near_duplicate: NearDuplicateSettings = NearDuplicateSettings()
    no_progress: NoProgressSettings = NoProgressSettings()
    tool_loop: ToolLoopSettings = ToolLoopSettings()
    on_trip: TripAction = "kill"
    refuse_status: int = Field(default=403, ge=400, le=599)
    rules: list[Rule] = []


class AwsSigning(Strict):
    """Tripwire signs each call to this upstream with SigV4, with AWS credentials from
    botocore's usual chain (environment, ``profile``, container or instance role); the
    client's own signature, made for Tripwire's host, is replaced. Needs the ``aws`` extra."""

    region: str
    service: str = "bedrock"
    profile: str | None = None


class Upstream(Strict):
    base_url: str
    format: str = "openai"  # a wire format registered in proxy/providers/__init__.py
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    # OpenAI-compatible hosts differ on which cap field they accept when the client sent none.
    cap_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    # The model behind each deployment name (Azure OpenAI): prices, labels and the tokenizer
    # follow the model, not the name a resource gave it.
    deployments: dict[str, str] = {}
    aws_sigv4: AwsSigning | None = None
    # Paths (globs on the normalised path) forwarded under a budget although their cost cannot
    # be bounded: a deliberate opening, logged at start-up.
    unbounded_paths: tuple[str, ...] = ()
    # Tenants whose calls may go out with this upstream's key when they have none of their
    # own; any other tenant without one is refused.
    shared_key_tenants: list[str] = []
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 600.0

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from proxy.providers import ADAPTERS

        if value not in ADAPTERS:
            known = ", ".join(repr(name) for name in ADAPTERS)
            raise ValueError(f"format must be one of {known}, not {value!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> Upstream:
        if self.aws_sigv4 is not None and (self.api_key or self.api_key_env):
            raise ValueError("an upstream signs with aws_sigv4 or sends an api_key, not both")
        return self

    def resolved_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


def _default_upstreams() -> dict[str, Upstream]:
    """One upstream per registered wire format, named after it, at the provider's address."""
    from proxy.providers import ADAPTERS

    return {
        name: Upstream(base_url=adapter.default_base_url, format=name)
        for name, adapter in ADAPTERS.items()
    }


class SessionSettings(Strict):
    """Untagged traffic is cut into sessions, so one client is never one task forever."""

    enabled: bool = True
    # No call of the client for this long ends its session; the next call starts a new one.
    idle_gap: Seconds = 300.0
    # A killed session ends this long after the kill even while the client keeps calling.
    cooldown: Seconds = 60.0


class Tagging(Strict):
    # Session headers other gateways already use, so moving to Tripwire needs no code change.
    task_headers: list[str] = [
        "x-task-id",
        "x-litellm-session-id",
        "x-litellm-trace-id",
        "helicone-session-id",
        "x-portkey-trace-id",
        "agent-session-id",
    ]
    agent_headers: list[str] = ["x-agent-id"]
    use_traceparent: bool = True
    sessions: SessionSettings = SessionSettings()


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # The request line and each header line; a longer one is answered 400 before any routing.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_headers: int = Field(default=128, ge=16)
    # A connection that delivers no complete request head for this long, new or idle between
    # requests, is closed. Longer than the idle timeout of the load balancers in front.
    idle_timeout: Seconds = 620.0
    # To receive a request's body once its head has arrived: a client trickling it gets 408.
    body_timeout: Seconds = 60.0
    # Streams open at once through one replica; more are refused with 429 until one ends.
    max_streams_per_task: int | None = Field(default=64, ge=1)
    max_streams_per_client: int | None = Field(default=1024, ge=1)  # per API key (or address)
    # One event of a provider's stream (an SSE event, a JSON-array element, an AWS event-stream
    # message); a bigger one ends the stream with an error event and is billed by its bytes (a
    # token is at least one byte).
    max_event_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)


def _address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``); the port defaults to Sentinel's 26379."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 address in brackets
        host, port = value.strip(), "26379"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"not a sentinel address: {value!r} (use host:port, e.g. sentinel-0:26379)"
        )
    return host, int(port)


class SentinelSettings(Strict):
    """Redis Sentinel names the current primary of ``service``; ``redis_url`` still gives the
    primary's scheme (rediss:// for TLS), credentials and database, but not its address."""

    service: str = Field(min_length=1)  # the master name the sentinels monitor, e.g. mymaster
    sentinels: list[str] = Field(min_length=1)  # host:port of each sentinel
    # Credentials and TLS of the sentinels themselves, which often differ from the primary's.
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls: bool = False

    @field_validator("sentinels")
    @classmethod
    def _each_an_address(cls, value: list[str]) -> list[str]:
        for item in value:
            _address(item)
        return value

    def addresses(self) -> list[tuple[str, int]]:
        return [_address(item) for item in self.sentinels]


class StateSettings(Strict):
    """Where task state lives: this process (``memory``) or Redis, shared by every replica."""

    backend: Literal["memory", "redis"] = "memory"
    task_ttl: Seconds = 3600.0
    max_tasks: int = Field(default=100_000, ge=1)
    max_agents_per_task: int = Field(default=64, ge=1)
    # A killed task is kept this long after its kill (or until resumed), whatever task_ttl
    # says and however many other tasks arrive: a kill must not wear off by itself.
    kill_retention: Seconds = 6 * 3600.0
    # The embedded ledger keeps at most this many killed tasks (oldest kill out first).
    max_killed_tasks: int = Field(default=10_000, ge=1)
    # redis:// or rediss:// (TLS); with redis_cluster, the URL of any node of the cluster; with
    # redis_sentinel, only its scheme, credentials and database count.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_cluster: bool = False
    # The primary as named by Redis Sentinel, followed across failovers.
    redis_sentinel: SentinelSettings | None = None
    key_prefix: str = Field(default="tw", pattern=r"^[A-Za-z0-9_.:-]+$")
    # closed: refuse calls with 503 while Redis is unreachable; open: forward and account in
    # memory, writing the counts back when Redis returns.
    on_state_error: Literal["closed", "open"] = "closed"
    redis_timeout: Seconds = 1.0
    # Connections each replica keeps to Redis (with redis_cluster: to each node). A call that
    # finds them all busy waits for one, up to redis_timeout.
    redis_max_connections: int = Field(default=256, ge=1)
    # A reservation not settled within this time (a replica died mid-call) is released.
    reservation_ttl: Seconds = 900.0
    # Embedded mode only: kills and budgets kept in this file across restarts (written every
    # sweep and on shutdown). Without it a restart forgets every task, its kill included.
    persist_file: Path | None = None
    # Embedded mode keeps the audit trail's last events in memory; this file keeps them all.
    audit_file: Path | None = None

    @model_validator(mode="after")
    def _redis_url_scheme(self) -> StateSettings:
        if self.backend == "redis" and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if self.redis_sentinel is not None:
            if self.redis_cluster:
                raise ValueError(
                    "redis_sentinel and redis_cluster exclude each other: Sentinel watches one "
                    "primary, a Redis Cluster fails over by itself"
                )
            if self.redis_url.startswith("unix://"):
                raise ValueError(
                    "redis_sentinel needs a redis:// or rediss:// redis_url (its credentials and "
                    "database are used; the sentinels name the host)"
                )
        return self


class AuthSettings(Strict):
    """Tripwire tokens (JWT). ``mode: jwt`` requires one on every agent call; the admin API
    always requires one with the ``admin`` role (``viewer`` to read), whatever the mode, or
    with mode none the local admin token."""

    mode: Literal["none", "jwt"] = "none"
    hs256_secret: str | None = Field(default=None, repr=False)
    hs256_secret_env: str | None = None
    public_key_file: Path | None = None  # PEM; RS256 or ES256 by key type
    jwks_file: Path | None = None  # keys chosen by kid, for rotation
    issuer: str | None = None
    audience: str | None = None
    leeway: float = Field(default=30.0, ge=0)
    # With mode none, `tripwire serve` writes a random admin token to this file (mode 0600) at
    # start-up, or reuses the one there, so `tripwire tasks` and the console work with no token
    # set up; empty turns it off. Never used with mode jwt.
    local_admin_file: str = "~/.config/tripwire/admin-token"

    @field_validator("hs256_secret")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None:
            check_hs256_secret(value)
        return value

    @model_validator(mode="after")
    def _keys_for_jwt(self) -> AuthSettings:
        if self.mode == "jwt" and not (
            self.hs256_secret or self.hs256_secret_env or self.public_key_file or self.jwks_file
        ):
            raise ValueError("mode jwt needs hs256_secret(_env), public_key_file or jwks_file")
        return self


MIN_HS256_SECRET_BYTES = 32


def check_hs256_secret(secret: str, where: str = "") -> None:
    """RFC 7518 asks for an HMAC key at least as long as the hash: a shorter one can be
    brute-forced offline from any token it signed."""
    if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}an HS256 secret needs at least {MIN_HS256_SECRET_BYTES} bytes "
            f"(got {len(secret.encode())}); make one with: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


class UpstreamKey(Strict):
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None

    def resolved(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None


class Tenant(Strict):
    # Provider keys Tripwire injects for this tenant's calls, by upstream name: agents never
    # hold them.
    upstream_keys: dict[str, UpstreamKey] = {}
    # Without a key of its own for an upstream, a tenant is refused unless this says it may
    # use the operator's shared key.
    use_shared_keys: bool = False


class Owner(Strict):
    url: str
    format: Literal["json", "slack"] = "json"


class Escalation(Strict):
    """Where trips are reported: the task owner's webhook, signed with HMAC-SHA256."""

    owners: dict[str, Owner] = {}  # names a token's or task's ``owner`` may use
    secret: str | None = Field(default=None, repr=False)
    secret_env: str | None = None
    attempts: int = Field(default=5, ge=1, le=20)
    timeout: Seconds = 5.0
    public_url: str | None = None  # how owners reach the admin API, for the action links
    allow_any_url: bool = False  # owners given as URLs in tokens; otherwise names only
    on: list[TripAction] = ["kill"]  # which trips reach the owner; observe trips can be noisy

    def resolved_secret(self) -> str | None:
        if self.secret:
            return self.secret
        return os.environ.get(self.secret_env) or None if self.secret_env else None


class Logging(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    calls: bool = True  # one line per call; trips and refusals are always logged


class OtelSettings(Strict):
    """OpenTelemetry traces: one span per call, exported over OTLP. The standard ``OTEL_*``
    variables configure what is not set here; tracing is off unless ``enabled`` is true or an
    OTLP endpoint is set (here or in ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``)."""

    enabled: bool | None = None  # None: on when an endpoint is configured
    endpoint: str | None = None  # over OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _ENDPOINT
    protocol: Literal["http/protobuf", "grpc"] | None = None  # over OTEL_EXPORTER_OTLP_PROTOCOL
    service_name: str | None = None  # over OTEL_SERVICE_NAME; "tripwire" when neither is set
    # Prompts and completions in spans (gen_ai.input.messages, gen_ai.output.messages): off, as
    # the GenAI conventions recommend; they are the caller's data.
    capture_content: bool = False
    # The batch processor's bounds, over OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE
    # and OTEL_BSP_SCHEDULE_DELAY (SDK defaults 2048, 512, 5 s): spans past a full queue are
    # dropped and counted.
    max_queue_size: int | None = Field(default=None, ge=1)
    max_export_batch_size: int | None = Field(default=None, ge=1)
    schedule_delay: Seconds | None = None
    export_timeout: Seconds | None = None  # over OTEL_EXPORTER_OTLP_TIMEOUT (10 s)

    def wanted(self, environ: Mapping[str, str]) -> bool:
        """Whether to trace: a switch, else an endpoint; never when the SDK is disabled."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            return False
        if self.enabled is not None:
            return self.enabled
        return bool(
            self.endpoint
            or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )


class TelemetrySettings(Strict):
    metrics_path: str = "/metrics"
    # Label values beyond these counts fold into "other", so cardinality stays bounded.
    max_model_labels: int = Field(default=50, ge=1)
    max_agent_labels: int = Field(default=50, ge=1)
    # A task with no call for this long counts as ended for the per-task histograms.
    active_task_window: Seconds = 300.0
    otel: OtelSettings = OtelSettings()
    # Who may scrape metrics_path: "token" needs a bearer token (metrics_token, or a Tripwire
    # token of no tenant with the metrics, viewer or admin role); "open" needs none; "auto" is
    # "token" when auth.mode is jwt or a metrics_token is set, else "open".
    metrics_auth: Literal["auto", "token", "open"] = "auto"
    metrics_token: str | None = Field(default=None, repr=False)
    metrics_token_env: str | None = None
    # Task ids in exemplars and the top-spend gauge: "untenanted" shows only tasks of no
    # tenant (a tenant's ids are its own business, as in the admin API); "all" or "none".
    metrics_task_ids: Literal["untenanted", "all", "none"] = "untenanted"

    def resolved_metrics_token(self) -> str | None:
        if self.metrics_token:
            return self.metrics_token
        return os.environ.get(self.metrics_token_env) or None if self.metrics_token_env else None


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="TRIPWIRE_",
        env_nested_delimiter="__",
    )

    server: ServerSettings = ServerSettings()
    upstreams: dict[str, Upstream] = Field(default_factory=_default_upstreams)
    tagging: Tagging = Tagging()
    policy: Policy = Policy()
    state: StateSettings = StateSettings()
    logging: Logging = Logging()
    telemetry: TelemetrySettings = TelemetrySettings()
    auth: AuthSettings = AuthSettings()
    tenants: dict[str, Tenant] = {}
    escalation: Escalation = Escalation()
    # Fault injection is a second, deliberate switch: a policy file alone cannot turn it on.
    allow_chaos: bool = False
    # Where the policy came from, for the start-up summary: a file, the config's own
    # ``policy:`` section, or the built-in defaults.
    _policy_source: str = PrivateAttr(default="built-in defaults")

    @property
    def policy_source(self) -> str:
        return self._policy_source

    @field_validator("upstreams")
    @classmethod
    def _with_defaults(cls, value: dict[str, Upstream]) -> dict[str, Upstream]:
        # The default routes (/v1/messages -> anthropic, /v1/* -> openai) need both names.
        return {**_default_upstreams(), **value}

    @model_validator(mode="after")
    def _chaos_allowed(self) -> Config:
        if not self.allow_chaos:
            for index, rule in enumerate(self.policy.rules):
                if rule.chaos is not None:
                    raise ValueError(
                        f"policy.rules[{index}].chaos: fault injection is refused unless the "
                        "configuration also sets allow_chaos: true"
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment overrides the file, which arrives as init kwargs.
        return (env_settings, init_settings)


def _check_environment() -> None:
    """A misspelt TRIPWIRE_* variable must fail like a misspelt key in the file."""
    sections = set(Config.model_fields)
    for name in os.environ:
        if name.startswith("TRIPWIRE_"):
            section = name[len("TRIPWIRE_") :].split("__", 1)[0].lower()
            if section not in sections:
                raise ConfigError(
                    f"environment variable {name}: no setting {section!r} "
                    f"(known: {', '.join(sorted(sections))})"
                )


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    """The TRIPWIRE_* variable that set the value at ``loc``, when one did."""
    for end in range(len(loc), 0, -1):
        name = "TRIPWIRE_" + "__".join(str(part) for part in loc[:end]).upper()
        if name in os.environ:
            return name
    return None


def _describe(error: ValidationError, sources: list[str]) -> str:
    lines: list[str] = []
    from_env: set[str] = set()
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        variable = _env_name(tuple(item["loc"]))
        if variable is not None:
            from_env.add(variable)
            where = f"{where} (from the environment variable {variable})"
        lines.append(f"  {where}: {item['msg']}")
    named = list(sources)
    if from_env:
        named.append(f"the environment ({', '.join(sorted(from_env))})")
    source = " and ".join(named) or "the built-in defaults"
    return "\n".join([f"invalid configuration in {source}:", *lines])


# Top-level keys of a policy file, none of which is a key of the config file.
_POLICY_KEYS = frozenset(
    (
        "defaults",
        "repeat",
        "cycle",
        "near_duplicate",
        "no_progress",
        "on_trip",
        "refuse_status",
        "rules",
    )
)


def _not_a_policy_file(data: dict[str, Any], path: str | Path) -> None:
    keys = set(data)
    if keys and keys <= _POLICY_KEYS:
        raise ConfigError(
            f"{path} is a policy file, not a config file: start with no --config to use "
            "rules/policy.yaml, or write a config file that names it with "
            f"`policy_file: {path}` (or holds it under a `policy:` section)"
        )


def _unset_variables(config: Config) -> list[str]:
    """Every ``*_env`` setting whose variable is unset or empty: a key or secret that would be
    silently missing at run time."""
    named: list[tuple[str, str | None]] = [
        ("auth.hs256_secret_env", config.auth.hs256_secret_env),
        ("escalation.secret_env", config.escalation.secret_env),
        ("telemetry.metrics_token_env", config.telemetry.metrics_token_env),
    ]
    named += [(f"upstreams.{n}.api_key_env", u.api_key_env) for n, u in config.upstreams.items()]
    named += [
        (f"tenants.{tenant}.upstream_keys.{upstream}.api_key_env", key.api_key_env)
        for tenant, settings in config.tenants.items()
        for upstream, key in settings.upstream_keys.items()
    ]
    return [
        f"{where}: the environment variable {variable} is not set"
        for where, variable in named
        if variable and not os.environ.get(variable)
    ]


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return loaded


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Load the config file, the policy file and the environment.

    The policy comes from the config file's ``policy:`` section when it has one, else from the
    file named by ``policy_file:``, else from ``rules/policy.yaml`` when that exists.
    """
    sources = []
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
        _not_a_policy_file(data, path)
        sources.append(str(path))
    policy_file = data.pop("policy_file", None)
    policy_source = f"the policy: section of {path}" if "policy" in data else "built-in defaults"
    if "policy" not in data:
        file = Path(policy_file) if policy_file else DEFAULT_POLICY_PATH
        if policy_file and path is not None and not file.is_absolute():
            # Relative to the config file that names it, wherever Tripwire was started from.
            file = Path(path).parent / file
        if policy_file or file.exists():
            data["policy"] = _read_yaml(file)
            sources.append(str(file))
            policy_source = str(file)
    data.update(overrides)
    _check_environment()
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from exc
    unset = _unset_variables(config)
    secret_env = config.auth.hs256_secret_env
    if secret_env and os.environ.get(secret_env):
        try:
            check_hs256_secret(os.environ[secret_env], f"auth.hs256_secret_env ({secret_env})")
        except ValueError as exc:
            unset.append(str(exc))
    if unset:
        raise ConfigError(
            "invalid configuration in "
            + (" and ".join(sources) or "the built-in defaults")
            + ":\n"
            + "\n".join(f"  {line}" for line in unset)
        )
    config._policy_source = policy_source
    return config
