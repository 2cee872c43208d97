"""The Lua script calls of the Redis ledger, sent together under load.

A script call made while no other waits on Redis goes at once. One made while others wait
joins a batch: every call made in that turn of the event loop goes out in one write on one
pooled connection on the next turn, and the replies are read back in order. So under load the
reserves, settles and detector-state writes of tens of calls share a pool checkout, a write and
a read instead of paying for one each, and a lone call pays for no batching. A call nothing
waits on to serve a client (the content detectors' state write) goes out at once when no other
call is waiting on Redis; otherwise it is deferred a moment and goes out with the next batch,
so under load it costs no write of its own. Commands are packed by hiredis straight from their
arguments, and a script the server does not know (after a restart or ``SCRIPT FLUSH``) is
loaded and the call sent again.

The connections come from the client's pool but are kept between calls for up to ``HOLD_S``
(a pool checkout costs about as much as the call itself). Not with a pool that follows the
primary Sentinel names: it must see every checkout to leave a former primary at once, so a
call's reserve and settle never land on two different primaries.

Used with one server or the primary Sentinel names; a Redis Cluster client routes each call to
its slot's node itself, so it keeps redis-py's own script calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError


class Script:
    """A Lua script as the server knows it: its source and the SHA1 it is called by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# How long a connection taken from the pool is kept for further calls.
HOLD_S = 1.0
# How long a deferrable call may wait for another call to go out with.
DEFER_S = 0.001

_Pending = tuple[bytes, "asyncio.Future[Any]"]


class ScriptCalls:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._queue: list[_Pending] = []  # calls for the batch of the loop's next turn
        self._deferred: list[_Pending] = []  # calls that wait for company (``DEFER_S``)
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._exchanges = 0  # writes whose replies are still being waited for
        # Connections taken from the pool, idle between calls, with when each was taken.
        self._idle: list[tuple[AbstractConnection, float]] = []
        self._hold = not isinstance(self._pool, SentinelConnectionPool)
        self._loading: dict[str, asyncio.Future[Any]] = {}  # scripts being loaded, by SHA1

    async def call(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        deferrable: bool = False,
    ) -> Any:
        """Run the script. A ``deferrable`` call (nothing waits on its answer to serve a
        client) goes out with the next call made, or ``DEFER_S`` later."""
        packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            return await self._run(packed, deferrable)
        except NoScriptError:
            await self._load(script)
            return await self._run(packed, deferrable)

    async def _load(self, script: Script) -> None:
        """Load a script the server lost; calls that found it missing at once share one load."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = asyncio.ensure_future(self._client.script_load(script.source))
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    async def _run(self, packed: bytes, deferrable: bool) -> Any:
        loop = asyncio.get_running_loop()
        busy = bool(self._exchanges or self._queue)
        if deferrable and busy:
            # Company is coming: it goes out with the next batch, or ``DEFER_S`` later.
            future: asyncio.Future[Any] = loop.create_future()
            self._deferred.append((packed, future))
            if self._timer is None:
                self._timer = loop.call_later(DEFER_S, self._flush_deferred)
            return await future
        if deferrable or busy:
            # Other calls are waiting on Redis: this one joins the next turn's batch. So does a
            # deferrable one while Redis is idle, in a task of its own: it costs no caller
            # anything now, where riding the next call would hold up that call's reply by its
            # script, and its caller going away does not take it with it.
            future = loop.create_future()
            self._enqueue([(packed, future)])
            return await future
        # Alone: at once, in this call, with the deferred ones after it.
        deferred = self._take_deferred()
        try:
            replies = await self._exchange([packed, *(command for command, _ in deferred)])
        except asyncio.CancelledError:
            # This call's caller gave up; the deferred ones are not its to drop: they go
            # again with the next batch (a detector-state write sent twice is refused the
            # second time by its version check, and its caller computes again).
            self._enqueue([pending for pending in deferred if not pending[1].done()])
            raise
        except BaseException as error:
            _fail(deferred, error)
            raise
        _resolve(deferred, replies[1:])
        if isinstance(replies[0], ResponseError):
            raise replies[0]
        return replies[0]

    def _take_deferred(self) -> list[_Pending]:
        deferred, self._deferred = self._deferred, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return deferred

    def _flush_deferred(self) -> None:
        self._timer = None
        self._enqueue(self._take_deferred())

    def _enqueue(self, pending: list[_Pending]) -> None:
        if pending and not self._queue:
            sending = asyncio.get_running_loop().create_task(self._send())
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
        self._queue.extend(pending)

    async def _send(self) -> None:
        batch, self._queue = self._queue, []
        batch += self._take_deferred()
        try:
            replies = await self._exchange([command for command, _ in batch])
        except BaseException as error:
            _fail(batch, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        _resolve(batch, replies)

    async def _exchange(self, commands: list[bytes]) -> list[Any]:
        """Write the commands at once on one pooled connection and read their replies in
        order; an error reply stands in its command's place."""
        self._exchanges += 1
        try:
            connection, taken = await self._connection()
            try:
                replies = await _round_trip(connection, b"".join(commands), len(commands))
            except BaseException as error:
                # Replies not read would be taken for the next ones': the connection goes,
                # and the idle ones too, which likely broke with it (a Redis restart).
                await self._drop(connection)
                await self.release_idle()
                wrapped = _as_connection_error(error)
                if wrapped is error:
                    raise
                raise wrapped from error
            if self._hold and time.monotonic() - taken < HOLD_S:
                self._idle.append((connection, taken))
            else:
                await self._pool.release(connection)
            return replies
        finally:
            self._exchanges -= 1

    async def _connection(self) -> tuple[AbstractConnection, float]:
        if self._idle:
            return self._idle.pop()
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return connection, time.monotonic()

    async def _drop(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect()
        await self._pool.release(connection)

    async def release_idle(self) -> None:
        """Give the idle connections back to the pool, closed: after a restart they are dead,
        and a fresh one is taken for the next call."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            await self._drop(connection)

    async def close(self, wait_s: float) -> None:
        """Send what was deferred and wait (up to ``wait_s``) for the batches on their way."""
        self._enqueue(self._take_deferred())
        if self._sending:
            await asyncio.wait(self._sending, timeout=wait_s)
        for sending in list(self._sending):
            sending.cancel()
        if self._sending:
            await asyncio.wait(self._sending)
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            await self._pool.release(connection)


async def _round_trip(connection: AbstractConnection, data: bytes, count: int) -> list[Any]:
    """Send the commands and read their replies, the whole exchange bounded by the
    connection's ``socket_timeout`` in one timeout scope. redis-py would bound the write with
    ``asyncio.wait_for``, which runs it in a task of its own on Python 3.11, and each reply
    with a scope of its own; the connection is this call's alone while it is held, so its
    setting is set aside for the exchange and put back."""
    limit = connection.socket_timeout
    if limit is None:
        return await _replies(connection, data, count)
    connection.socket_timeout = None
    try:
        async with asyncio.timeout(limit):
            return await _replies(connection, data, count)
    finally:
        connection.socket_timeout = limit


async def _replies(connection: AbstractConnection, data: bytes, count: int) -> list[Any]:
    await connection.send_packed_command(data, check_health=False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:  # one command's error: the others stand
            replies.append(error)
    return replies


def _resolve(pending: list[_Pending], replies: list[Any]) -> None:
    for (_, future), reply in zip(pending, replies, strict=True):
        if future.done():  # its caller gave up (the step's timeout)
            continue
        if isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _fail(pending: list[_Pending], error: BaseException) -> None:
    for _, future in pending:
        if future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)


def _as_connection_error(error: BaseException) -> BaseException:
    """What a call sees of a connection that broke under it: a ``ConnectionError`` whatever
    redis-py or the transport raised (a transport closed mid-write surfaces as an
    ``AttributeError`` in some Python versions), so the ledger's retry and fallback apply."""
    if isinstance(error, asyncio.CancelledError | RedisError | TimeoutError):
        return error
    return RedisConnectionError(f"Redis connection lost: {error!r}")
