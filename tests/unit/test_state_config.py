"""The ``state`` section's Redis Sentinel settings: the file and environment forms, the errors
that name the field, and the client they build (constructed only: no connection is opened)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection

from proxy.config import Config, SentinelSettings, StateSettings, load_config
from proxy.errors import ConfigError
from proxy.session.redis_client import PrimaryPool, SentinelPrimary, build_client

SENTINEL_FILE = """
policy: {}
state:
  backend: redis
  redis_url: redis://:primary-secret@mymaster/2
  redis_sentinel:
    service: mymaster
    sentinels: ["sentinel-0:26379", "sentinel-1", "[fd00::1]:26380"]
"""


def _load(tmp_path: Path, text: str) -> Config:
    file = tmp_path / "tripwire.yaml"
    file.write_text(text, encoding="utf-8")
    return load_config(file)


def _refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, text)
    return str(refused.value)


def test_sentinels_from_the_file(tmp_path: Path) -> None:
    sentinel = _load(tmp_path, SENTINEL_FILE).state.redis_sentinel
    assert sentinel is not None and sentinel.service == "mymaster"
    assert sentinel.addresses() == [
        ("sentinel-0", 26379),
        ("sentinel-1", 26379),
        ("fd00::1", 26380),
    ]


def test_the_environment_sets_or_completes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIPWIRE_STATE__REDIS_SENTINEL__PASSWORD", "sentinel-secret")
    state = _load(tmp_path, SENTINEL_FILE).state
    assert state.redis_sentinel is not None
    assert state.redis_sentinel.service == "mymaster"  # the file's, merged with the variable
    assert state.redis_sentinel.password == "sentinel-secret"
    assert "sentinel-secret" not in repr(state)

    monkeypatch.setenv("TRIPWIRE_STATE__BACKEND", "redis")
    monkeypatch.setenv("TRIPWIRE_STATE__REDIS_SENTINEL__SERVICE", "cache")
    monkeypatch.setenv("TRIPWIRE_STATE__REDIS_SENTINEL__SENTINELS", '["s0:5000", "s1:5001"]')
    state = load_config(None, policy={}).state
    assert state.redis_sentinel is not None and state.redis_sentinel.service == "cache"
    assert state.redis_sentinel.addresses() == [("s0", 5000), ("s1", 5001)]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            "redis_cluster: true\n  redis_sentinel: {service: m, sentinels: [s:26379]}",
            "state: Value error, redis_sentinel and redis_cluster exclude each other",
        ),
        (
            "redis_sentinel: {service: m, sentinels: []}",
            "state.redis_sentinel.sentinels: List should have at least 1 item",
        ),
        (
            "redis_sentinel: {sentinels: [s:26379]}",
            "state.redis_sentinel.service: Field required",
        ),
        (
            "redis_sentinel: {service: m, sentinels: ['s:port']}",
            "state.redis_sentinel.sentinels: Value error, not a sentinel address: 's:port'",
        ),
        (
            "redis_sentinel: {service: m, sentinels: [s], pasword: x}",
            "state.redis_sentinel.pasword: Extra inputs are not permitted",
        ),
        (
            "redis_url: unix:///run/redis.sock\n  redis_sentinel: {service: m, sentinels: [s]}",
            "redis_sentinel needs a redis:// or rediss:// redis_url",
        ),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, state: str, message: str) -> None:
    refusal = _refusal(tmp_path, f"policy: {{}}\nstate:\n  backend: redis\n  {state}\n")
    assert message in refusal


async def test_the_client_takes_the_primary_from_the_sentinels_and_the_rest_from_the_url() -> None:
    settings = StateSettings(
        backend="redis",
        redis_url="rediss://tripwire:primary-secret@ignored.example:6380/3",
        redis_timeout=0.5,
        redis_sentinel=SentinelSettings(
            service="mymaster",
            sentinels=["s0:26379", "s1:26380"],
            username="watcher",
            password="sentinel-secret",
            tls=True,
        ),
    )
    for for_pubsub in (False, True):
        client = build_client(settings, for_pubsub=for_pubsub)
        try:
            assert isinstance(client, SentinelPrimary)
            pool = client.connection_pool
            assert isinstance(pool, PrimaryPool) and pool.service_name == "mymaster"
            assert issubclass(pool.connection_class, SSLConnection)
            primary = pool.connection_kwargs
            assert (primary["username"], primary["password"], primary["db"]) == (
                "tripwire",
                "primary-secret",
                3,
            )
            assert "host" not in primary and primary["decode_responses"] is True
            assert primary["socket_timeout"] == (None if for_pubsub else 0.5)
            assert primary.get("health_check_interval", 0) == (5 if for_pubsub else 0)
            assert client.sentinel_manager is not None
            sentinels = [s.connection_pool for s in client.sentinel_manager.sentinels]
            assert [
                (p.connection_kwargs["host"], p.connection_kwargs["port"]) for p in sentinels
            ] == [
                ("s0", 26379),
                ("s1", 26380),
            ]
            for sentinel in sentinels:
                assert issubclass(sentinel.connection_class, SSLConnection)
                assert sentinel.connection_kwargs["password"] == "sentinel-secret"
                assert sentinel.connection_kwargs["username"] == "watcher"
                # Bounded even for the subscription, whose own reads wait indefinitely.
                assert sentinel.connection_kwargs["socket_timeout"] == 0.5
        finally:
            await client.aclose()
