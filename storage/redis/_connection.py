"""redis-py connections for the hot path: sent without a task per command, and held
instead of checked out of the pool per call.

With a socket timeout set (ours: `DEFAULT_SOCKET_TIMEOUT`), redis-py's asyncio connection
sends every command under `asyncio.wait_for`, which starts a Task and takes an extra turn
of the event loop: about 30 µs of a 320 µs step on the 2-core test machine (issue 17).
These send in the caller's task, and time the send only when the socket did not take the
whole command at once (a timer costs as much as the task did): redis-py's errors and its
disconnect-on-failure are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["HeldConnections", "send_in_task"]


class _SendInTask:
    """Mixed in before a redis-py connection class (`send_in_task` does)."""

    socket_timeout: float | None
    is_connected: bool
    _writer: Any

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.socket_timeout:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        me: Any = self
        if not self.is_connected:
            # `connect`, not redis-py's `connect_check_health`: a Sentinel-managed connection
            # asks the Sentinels for the primary there, so a reconnect after a failover goes
            # to the new primary, not back to the old address.
            await me.connect()
        if check_health:
            await me.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            self._writer.writelines(command)
            if self._writer.transport.get_write_buffer_size():  # not all sent at once
                async with asyncio.timeout(self.socket_timeout):
                    await self._writer.drain()
            else:  # cannot block: it only waits while the buffer is past its high mark
                await self._writer.drain()
        except TimeoutError:  # before OSError, of which it is one
            await me.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await me.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await me.disconnect(nowait=True)  # a send cut short leaves the stream unusable
            raise


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def send_in_task(pool: ConnectionPool) -> None:
    """Make the connections `pool` opens from now on send as this module says."""
    base = pool.connection_class
    if issubclass(base, _SendInTask):
        return
    if base not in _classes:
        _classes[base] = type(f"InTask{base.__name__}", (_SendInTask, base), {})
    pool.connection_class = _classes[base]


class HeldConnections:
    """Connections taken out of a standalone client's pool once and kept, for the scripts of
    the hot path (`commit.lua`, `create.lua`): each call takes an idle one (or one more from
    the pool), sends its `EVALSHA`, reads the reply and keeps the connection for the next.

    redis-py 8's pool checkout (a lock, a timer, observability hooks: two each way) cost
    about 90 µs of a 320 µs step on the 2-core test machine (issue 17). The pool still
    bounds the connections (`max_connections`): at most a quarter of them are kept idle (the
    rest go back), and closing the client closes them. Failures are retried as redis-py's
    client retries them (the connection's `retry`: reconnect, send again; a commit may then
    be sent twice, and its second answer is "duplicate", handled above as for any retried
    call). A connection whose call did not end with a reply (out of retries, cancelled) is
    disconnected and given back to the pool. A script the server lost goes the ordinary
    way (`fallback`), which loads it.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        self._keep = max(1, int(getattr(pool, "max_connections", 100)) // 4)
        """Idle connections kept at most: the rest go back to the pool, so the other
        commands (loads, leases, the queue) always find some there."""

    async def evalsha(
        self, script: AsyncScript, keys: list[str], args: list[Any],
        fallback: Callable[[], Awaitable[Any]], then: Sequence[Any] = (),
    ) -> Any:  # fmt: skip
        """The script's reply; with `then` (a command: `WAIT 1 1000`), sent right behind the
        script on the same connection, in the same round trip: `(reply, then's reply)`.
        (A wait must be on the connection that wrote: the server waits for that
        connection's own last write.)"""
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)

        async def send() -> Any:
            if not then:
                await conn.send_command(*evalsha)
                return await conn.read_response()
            await conn.send_packed_command(conn.pack_commands([evalsha, tuple(then)]))
            try:
                reply = await conn.read_response()
            except ResponseError as error:
                with contextlib.suppress(ResponseError):  # a replica refuses the wait too
                    await conn.read_response()  # then's reply: the connection stays in step
                if isinstance(error, NoScriptError):  # load it here, where it runs
                    await conn.send_command("SCRIPT", "LOAD", script.script)
                    await conn.read_response()
                raise
            try:
                waited = await conn.read_response()
            except ResponseError as error:  # the script's write stands: say so, not this
                waited = error
            return reply, waited

        async def failed(error: Exception) -> None:  # as redis-py's client: reconnect, retry
            await conn.disconnect()

        try:
            try:
                reply = await conn.retry.call_with_retry(send, failed)
            except NoScriptError:
                if not then:
                    raise
                reply = await conn.retry.call_with_retry(send, failed)  # loaded: once more
        except NoScriptError:  # a server restarted or flushed: load it the ordinary way
            await self._put_back(conn)
            if then:  # (loaded on this connection, and still not found: a flush just now)
                raise
            return await fallback()
        except ResponseError:
            await self._put_back(conn)  # an error reply: the connection is fine
            raise
        except BaseException:  # out of retries, cancelled: no reply, or one left unread
            await self._drop(conn)
            raise
        await self._put_back(conn)
        return reply

    async def send(self, *commands: Sequence[Any]) -> list[Any]:
        """The replies to `commands`, sent together on one held connection (a write and the
        wait for it, say), retried as `evalsha` is."""
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]

        async def send() -> list[Any]:
            await conn.send_packed_command(conn.pack_commands([tuple(c) for c in commands]))
            return [await conn.read_response() for _ in commands]

        async def failed(error: Exception) -> None:
            await conn.disconnect()

        try:
            replies: list[Any] = await conn.retry.call_with_retry(send, failed)
        except ResponseError:
            await self._put_back(conn)
            raise
        except BaseException:
            await self._drop(conn)
            raise
        await self._put_back(conn)
        return replies

    async def _put_back(self, conn: AbstractConnection) -> None:
        if len(self._idle) < self._keep:
            self._idle.append(conn)
        else:
            await self._pool.release(conn)

    async def _drop(self, conn: AbstractConnection) -> None:
        await conn.disconnect(nowait=True)
        await self._pool.release(conn)
