"""The redis-py client for the state settings: one server, a Redis Cluster, or the primary that
Redis Sentinel names.

A Sentinel-managed client asks the sentinels for the primary's address whenever it opens a
connection. A connection to a primary that has since been demoted answers writes with
``READONLY``; redis-py turns that into a connection error and drops the connection, so the next
attempt reaches the new primary. That alone is not enough: after a planned failover
(``SENTINEL FAILOVER``, a Kubernetes operator draining a node) Sentinel demotes the old primary
only some ten seconds after promoting the new one, and until then the old primary accepts writes
that are then discarded. So while commands flow, the pool re-asks the sentinels every second and
drops its connections to a former primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    SSLConnection,
    parse_url,
)
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import MaxConnectionsError, RedisError

from proxy.config import SentinelSettings, StateSettings

# An idle subscription must still notice a dead server.
PUBSUB_HEALTH_CHECK_S = 5
# How often the sentinels are asked for the primary while commands flow.
PRIMARY_RECHECK_S = 1.0
# A command waits this long at most for that answer; a slower one arrives in the background.
PRIMARY_RECHECK_WAIT_S = 0.05


class PrimaryPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to the primary Sentinel names, dropped as soon as it names another one; a
    command that finds them all busy waits for one, as with a single server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._rechecked = 0.0
        self._recheck: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        now = time.monotonic()
        if now - self._rechecked >= PRIMARY_RECHECK_S and (
            self._recheck is None or self._recheck.done()
        ):
            self._rechecked = now
            self._recheck = asyncio.create_task(self._ask_for_primary())
            await asyncio.wait({self._recheck}, timeout=PRIMARY_RECHECK_WAIT_S)
        # Arguments passed on as given: redis-py warns of the older ones.
        connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        return connection

    async def _ask_for_primary(self) -> None:
        # A changed address also drops the idle connections (redis-py does that); the commands
        # themselves report sentinels or a primary that cannot be reached.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.get_master_address()  # type: ignore[no-untyped-call]

    async def release(self, connection: AbstractConnection) -> None:
        # A connection that was busy when the primary changed still points at the former one.
        address = self.master_address
        if (
            address is not None
            and connection.is_connected
            and (getattr(connection, "host", None), getattr(connection, "port", None))
            != tuple(address)
        ):
            await connection.disconnect()
        await super().release(connection)

    async def stop_rechecking(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
            self._recheck = None


class WaitingCluster(RedisCluster):
    """redis-py's cluster client refuses a command when a node's connections are all busy; this
    one waits for a free one (up to the timeout), as the single-server and Sentinel pools do.
    Commands in flight are bounded by one node's connections, so no node runs out."""

    def __init__(self, *args: Any, wait_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = asyncio.Semaphore(kwargs.get("max_connections", 100))
        self._wait_timeout = wait_timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise MaxConnectionsError("no Redis Cluster connection came free in time") from None
        else:
            await self._slots.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._slots.release()


class SentinelPrimary(aioredis.Redis):
    """The primary's client; closing it also closes its connections to the sentinels, which
    redis-py leaves to the caller."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            if isinstance(self.connection_pool, PrimaryPool):
                await self.connection_pool.stop_rechecking()
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


def build_client(settings: StateSettings, *, for_pubsub: bool = False) -> Any:
    timeout = None if for_pubsub else settings.redis_timeout
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "decode_responses": True,
    }
    if for_pubsub:
        options["health_check_interval"] = PUBSUB_HEALTH_CHECK_S
    if settings.redis_cluster and not for_pubsub and settings.redis_sentinel is None:
        return WaitingCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            wait_timeout=settings.redis_timeout,
            **options,
        )
    # A burst of calls larger than the pool waits for a free connection (bounded by the
    # timeout) rather than fail as if Redis were down.
    options["max_connections"] = settings.redis_max_connections
    options["timeout"] = settings.redis_timeout
    if settings.redis_sentinel is not None:
        # Kills are published on the primary, so subscribing there hears them all.
        return _sentinel_primary(settings, settings.redis_sentinel, options)
    # A PUBLISH reaches every node of a cluster, so one subscription to the given node hears
    # the kills of every replica.
    return aioredis.Redis.from_pool(BlockingConnectionPool.from_url(settings.redis_url, **options))


def _sentinel_primary(
    settings: StateSettings, sentinel: SentinelSettings, options: dict[str, Any]
) -> SentinelPrimary:
    primary = dict(parse_url(settings.redis_url))
    # The sentinels name the host; the URL still says how to talk to it.
    primary.pop("host", None)
    primary.pop("port", None)
    if primary.pop("connection_class", None) is SSLConnection:
        primary["ssl"] = True
    # Bounded even for the subscription's client, whose own reads wait indefinitely: asking a
    # sentinel that stopped answering must not hang the reconnect.
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "username": sentinel.username,
        "password": sentinel.password,
        "ssl": sentinel.tls,
    }
    manager = Sentinel(sentinel.addresses(), sentinel_kwargs=sentinel_options)
    client: SentinelPrimary = manager.master_for(
        sentinel.service,
        redis_class=SentinelPrimary,
        connection_pool_class=PrimaryPool,
        **{**options, **primary},
    )
    client.sentinel_manager = manager
    return client
