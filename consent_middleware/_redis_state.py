"""``SharedState`` in Redis, for several workers or replicas (``CONSENT_REDIS_URL``).

Key layout, all under one prefix (default ``consent:``):

- ``lock:{name}``     a lock: ``SET NX PX`` with a random owner token, released only by
                      its owner (compare-and-delete), expiring on its own if a worker dies;
- ``count:{name}``    a throttle counter (``INCR``; the window starts with the first hit);
- ``flag:{name}``     a short-lived flag holding an integer;
- ``blob:{name}``     a short-lived value (a grant's encrypted result);
- ``mark:{kind}:{k}`` a revocation mark (Unix ms), kept as long as sessions it concerns;
- channel ``events``  every mark is also published here; each worker applies it to its local
                      view at once, and reloads all marks whenever it (re)subscribes, so a
                      worker that missed messages while Redis was away catches up.

Every command has a short timeout: a slow or absent Redis gives ``SharedStateError`` (a 503
for the request that needed it), never a stalled event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from ._exceptions import SharedStateError
from ._state import LocalState, MarkKind

logger = logging.getLogger("consent_middleware")

T = TypeVar("T")
# Longest a lock is held if its owner dies mid-way; owners finish well within it.
LOCK_TTL = 15.0
# Longest a request waits for a lock before giving up with a 503.
LOCK_WAIT = 12.0
LOCK_POLL = 0.02
START_WAIT = 1.0
RESUBSCRIBE_BACKOFF = (0.1, 0.5, 1.0, 2.0)
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Keep the larger of the stored and the new mark, with the new expiry when it wins.
_MARK = """
local current = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

Listener = Callable[[dict[str, Any]], None]


class RedisState:
    """``SharedState`` over redis-py's asyncio client."""

    def __init__(self, url: str, *, prefix: str = "consent:", timeout: float = 0.5) -> None:
        self.prefix = prefix
        self.redis: redis.Redis = redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self.local = LocalState()
        self.channel = f"{prefix}events"
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        # Marks this worker made while Redis was away: (kind, key) -> (at, until), sent
        # again until Redis takes them, so the other replicas learn them too.
        self._unpublished: dict[tuple[MarkKind, str], tuple[int, float]] = {}
        self._republishing: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, operation: Awaitable[T]) -> T:
        """Await a Redis command; a slow or absent Redis becomes ``SharedStateError``."""
        try:
            return await operation
        except (RedisError, OSError) as exc:
            raise SharedStateError(f"the shared store did not answer: {exc}") from exc

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        name = self._key("lock", key)
        owner = secrets.token_hex(16)
        deadline = time.monotonic() + LOCK_WAIT
        ttl_ms = int(LOCK_TTL * 1000)
        while not await self.call(self.redis.set(name, owner, nx=True, px=ttl_ms)):
            if time.monotonic() > deadline:
                raise SharedStateError(f"waited too long for the lock {key!r}")
            await asyncio.sleep(LOCK_POLL)
        # Kept alive while held: the work under a lock (a grant, a Management write) may
        # take longer than the expiry that frees the lock of a worker that died.
        keeper = asyncio.get_running_loop().create_task(self._keep(name, owner, ttl_ms))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            # A failed release only means the lock expires on its own, a little later.
            with contextlib.suppress(SharedStateError):
                await self.call(self.redis.eval(_RELEASE, 1, name, owner))

    async def _keep(self, name: str, owner: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            with contextlib.suppress(SharedStateError):
                await self.call(self.redis.eval(_EXTEND, 1, name, owner, str(ttl_ms)))

    async def incr(self, key: str, window: float) -> tuple[int, float]:
        name = self._key("count", key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.pexpire(name, int(window * 1000), nx=True)
            pipe.pttl(name)
            count, _, ttl = await self.call(pipe.execute())
        return int(count), max(0.0, int(ttl) / 1000)

    async def put_flag(self, key: str, value: int, ttl: float) -> None:
        await self.call(self.redis.set(self._key("flag", key), value, px=int(ttl * 1000)))

    async def get_flag(self, key: str) -> int | None:
        value = await self.call(self.redis.get(self._key("flag", key)))
        return int(value) if value is not None else None

    async def drop_flag(self, key: str) -> None:
        await self.call(self.redis.delete(self._key("flag", key)))

    async def put_blob(self, key: str, value: bytes, ttl: float) -> None:
        await self.call(self.redis.set(self._key("blob", key), value, px=int(ttl * 1000)))

    async def get_blob(self, key: str) -> bytes | None:
        value = await self.call(self.redis.get(self._key("blob", key)))
        return value.encode() if isinstance(value, str) else value

    async def publish_mark(self, kind: MarkKind, key: str, at: int, ttl: float) -> None:
        # Applied here first: this worker must honour its own mark even if Redis is away.
        until = time.time() + ttl
        self.local.apply_mark(kind, key, at, until)
        try:
            await self._send_mark(kind, key, at, until)
        except SharedStateError:
            # A logout, or a withdrawal Auth0 has saved: every replica must learn it, so
            # it is sent again once Redis answers (the caller still hears of the outage).
            previous = self._unpublished.get((kind, key))
            if previous is None or previous[0] < at:
                self._unpublished[(kind, key)] = (at, until)
            if self._republishing is None or self._republishing.done():
                self._republishing = asyncio.get_running_loop().create_task(self._republish())
            raise

    async def _send_mark(self, kind: MarkKind, key: str, at: int, until: float) -> None:
        ttl_ms = int((until - time.time()) * 1000)
        if ttl_ms <= 0:
            return  # expired meanwhile: nothing left to end
        name = self._key("mark", kind.value, key)
        await self.call(self.redis.eval(_MARK, 1, name, str(at), str(ttl_ms)))
        message = {"type": "mark", "kind": kind.value, "key": key, "at": at, "until": until}
        await self.publish(message)

    async def _republish(self) -> None:
        """Send the marks Redis missed, with the resubscription's back-off, until it takes
        them all."""
        attempt = 0
        while self._unpublished:
            await asyncio.sleep(RESUBSCRIBE_BACKOFF[min(attempt, len(RESUBSCRIBE_BACKOFF) - 1)])
            attempt += 1
            for (kind, key), (at, until) in list(self._unpublished.items()):
                try:
                    await self._send_mark(kind, key, at, until)
                except SharedStateError:
                    break
                if self._unpublished.get((kind, key)) == (at, until):
                    del self._unpublished[(kind, key)]
            else:
                attempt = 0
        logger.info("marks made while the shared store was away are published")

    async def publish(self, message: dict[str, Any]) -> None:
        await self.call(self.redis.publish(self.channel, json.dumps(message)))

    def mark(self, kind: MarkKind, key: str) -> int | None:
        return self.local.mark(kind, key)

    @property
    def has_marks(self) -> bool:
        return self.local.has_marks

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every message published on the channel (sessions ended)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())
            # Marks published before this worker started are loaded on subscribing; wait a
            # moment for that, but never long: a Redis that is away must not stop start-up.
            await self.wait_subscribed(START_WAIT)

    async def wait_subscribed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _follow(self) -> None:
        """Subscribe, load the marks, apply what is published; start again when cut off."""
        attempt = 0
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self._load_marks()
                    self._subscribed.set()
                    attempt = 0
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # following must outlive any failure, a bad message too
                self._subscribed.clear()
                delay = RESUBSCRIBE_BACKOFF[min(attempt, len(RESUBSCRIBE_BACKOFF) - 1)]
                attempt += 1
                logger.warning("shared store unreachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _load_marks(self) -> None:
        now = time.time()
        async for name in self.redis.scan_iter(match=self._key("mark", "*"), count=500):
            text = name.decode() if isinstance(name, bytes) else str(name)
            _, kind, key = text[len(self.prefix) :].split(":", 2)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(name)
                pipe.pttl(name)
                value, ttl = await pipe.execute()
            if value is not None and int(ttl) > 0:
                self.local.apply_mark(MarkKind(kind), key, int(value), now + int(ttl) / 1000)

    def _apply(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            if message.get("type") == "mark":
                kind = MarkKind(message["kind"])
                self.local.apply_mark(kind, message["key"], message["at"], message["until"])
            for listener in self._listeners:
                listener(message)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignored a malformed shared-store message: %s", exc)

    async def aclose(self) -> None:
        for task in (self._task, self._republishing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._republishing = None
        await self.redis.aclose()
