"""State that every worker of one deployment must agree on.

Per-user locks, throttle counters, short-lived flags and revocation marks. ``LocalState``
keeps them in this process, which is right for one worker; a networked implementation
(Redis) of the same ``SharedState`` protocol spreads them across workers and replicas
without any change above this module.

Revocation marks are read on every gated request, so they are read from a local view
(plain dicts, no I/O, no await): a networked implementation keeps that view current by
subscribing to the marks other replicas publish.
"""

from __future__ import annotations

import asyncio
import enum
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

from cachetools import LRUCache

# Table values are (payload, expiry).
V = TypeVar("V", bound=tuple[Any, float])

# Bounds of the in-process tables: past them the oldest entries go first. A mark only
# needs to outlive the sessions it ends (the absolute session lifetime).
MAX_MARKS = 100_000
MAX_COUNTERS = 100_000
MAX_BLOB_BYTES = 32 * 1024 * 1024


class MarkKind(enum.Enum):
    #: One session (its ``sid``) ended: logout, or a back-channel logout for it.
    SESSION = "sid"
    #: Every session of one user (``sub``) issued before the mark must be re-checked.
    USER = "sub"
    #: Every session of one user issued before the mark ended (back-channel logout by sub).
    USER_ENDED = "sub-ended"


class SharedState(Protocol):
    """What the workers of one deployment share. Every method that may do I/O is a coroutine."""

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """A mutual-exclusion lock for ``key`` across every worker that shares this state."""
        ...

    async def incr(self, key: str, window: float) -> tuple[int, float]:
        """Count one hit on ``key`` in a fixed window of ``window`` seconds that starts
        with the first hit; the count so far and the seconds until the window ends."""
        ...

    async def put_flag(self, key: str, value: int, ttl: float) -> None:
        """Set a flag holding ``value`` that expires after ``ttl`` seconds."""
        ...

    async def get_flag(self, key: str) -> int | None:
        """The flag's value, or None when it is not set (or expired)."""
        ...

    async def drop_flag(self, key: str) -> None: ...

    async def put_blob(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds, readable by every worker."""
        ...

    async def get_blob(self, key: str) -> bytes | None: ...

    async def publish_mark(self, kind: MarkKind, key: str, at: int, ttl: float) -> None:
        """Record a revocation mark (Unix ms) for ``ttl`` seconds, visible to every worker."""
        ...

    def mark(self, kind: MarkKind, key: str) -> int | None:
        """The current mark for ``key``, from the local view: no I/O."""
        ...

    @property
    def has_marks(self) -> bool:
        """False when no mark of any kind is live: the gate's fast path skips the lookups."""
        ...

    async def start(self) -> None:
        """Begin keeping the local view of the marks current (idempotent)."""
        ...

    async def aclose(self) -> None: ...


class LocalState:
    """``SharedState`` for a single worker: everything in this process, bounded."""

    def __init__(self) -> None:
        # Locks live as long as someone holds or waits for them, and no longer.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Values are (number, expiry); the expiry is monotonic for counters and flags and
        # wall-clock for marks, which must mean the same on every replica.
        self._counters: dict[str, tuple[int, float]] = {}
        self._flags: dict[str, tuple[int, float]] = {}
        self._blobs: LRUCache[str, tuple[bytes, float]] = LRUCache(
            maxsize=MAX_BLOB_BYTES, getsizeof=_blob_size
        )
        self._marks: dict[MarkKind, dict[str, tuple[int, float]]] = {k: {} for k in MarkKind}

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            yield

    async def incr(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        count, ends = self._counters.get(key, (0, now + window))
        if ends <= now:
            count, ends = 0, now + window
        _bounded_put(self._counters, key, (count + 1, ends), now, MAX_COUNTERS)
        return count + 1, ends - now

    async def put_flag(self, key: str, value: int, ttl: float) -> None:
        now = time.monotonic()
        _bounded_put(self._flags, key, (value, now + ttl), now, MAX_COUNTERS)

    async def get_flag(self, key: str) -> int | None:
        found = self._flags.get(key)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    async def drop_flag(self, key: str) -> None:
        self._flags.pop(key, None)

    async def put_blob(self, key: str, value: bytes, ttl: float) -> None:
        entry = (value, time.monotonic() + ttl)
        if _blob_size(entry) <= MAX_BLOB_BYTES:
            self._blobs[key] = entry

    async def get_blob(self, key: str) -> bytes | None:
        found = self._blobs.get(key)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    async def publish_mark(self, kind: MarkKind, key: str, at: int, ttl: float) -> None:
        self.apply_mark(kind, key, at, time.time() + ttl)

    def apply_mark(self, kind: MarkKind, key: str, at: int, until: float) -> None:
        """Write a mark into the local view (also what a subscriber does for remote marks)."""
        marks = self._marks[kind]
        previous = marks.get(key)
        if previous is None or previous[0] < at:
            # Only expired marks make room: dropping a live one would bring an ended session
            # back. Past MAX_MARKS live marks the table grows (each mark needed a login).
            _bounded_put(marks, key, (at, until), time.time(), MAX_MARKS, evict_live=False)

    def mark(self, kind: MarkKind, key: str) -> int | None:
        found = self._marks[kind].get(key)
        if found is None:
            return None
        if found[1] <= time.time():
            del self._marks[kind][key]
            return None
        return found[0]

    @property
    def has_marks(self) -> bool:
        marks = self._marks
        return any(marks.values())

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _blob_size(entry: tuple[bytes, float]) -> int:
    return len(entry[0]) + 256


def _bounded_put(
    table: dict[str, V], key: str, value: V, now: float, bound: int, evict_live: bool = True
) -> None:
    """Insert, first dropping expired entries and then (``evict_live``) the oldest when the
    table is full."""
    if key not in table and len(table) >= bound:
        for stale in [k for k, (_, expiry) in table.items() if expiry <= now]:
            del table[stale]
        while evict_live and len(table) >= bound:
            del table[next(iter(table))]
    table[key] = value
