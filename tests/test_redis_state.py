"""RedisState against a real redis-server: what several workers share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from consent_middleware._exceptions import SharedStateError
from consent_middleware._redis_state import RedisState
from consent_middleware._state import MarkKind
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(redis: RedisServer) -> AsyncIterator[tuple[RedisState, RedisState]]:
    """Two workers' views of one Redis, each following the shared channel."""
    prefix = f"t{time.monotonic_ns()}:"
    a, b = RedisState(redis.url, prefix=prefix), RedisState(redis.url, prefix=prefix)
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_lock_excludes_across_workers(pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    inside = 0
    most = 0

    async def hold(state: RedisState) -> None:
        nonlocal inside, most
        async with state.lock("grant:s1"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(hold(s) for s in (a, b, a, b)))
    assert most == 1


async def test_counters_flags_and_blobs(pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    assert (await a.incr("accepts:u", 60))[0] == 1
    count, reset_in = await b.incr("accepts:u", 60)
    assert count == 2 and 59 <= reset_in <= 60
    await a.put_flag("withdrawn:u", 1234, 60)
    assert await b.get_flag("withdrawn:u") == 1234
    await b.drop_flag("withdrawn:u")
    assert await a.get_flag("withdrawn:u") is None
    await a.put_blob("grant:s", b"sealed", 60)
    assert await b.get_blob("grant:s") == b"sealed"
    await a.put_blob("short", b"x", 0.05)
    await asyncio.sleep(0.1)
    assert await b.get_blob("short") is None


async def test_a_mark_reaches_the_other_worker_at_once(
    pair: tuple[RedisState, RedisState],
) -> None:
    a, b = pair
    assert not b.has_marks
    await a.publish_mark(MarkKind.SESSION, "sid-1", 1000, 60)
    assert a.mark(MarkKind.SESSION, "sid-1") == 1000  # its own, with no round trip
    deadline = time.monotonic() + 2
    while b.mark(MarkKind.SESSION, "sid-1") is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert b.mark(MarkKind.SESSION, "sid-1") == 1000
    # An older mark never replaces a newer one.
    await a.publish_mark(MarkKind.SESSION, "sid-1", 500, 60)
    await asyncio.sleep(0.05)
    assert b.mark(MarkKind.SESSION, "sid-1") == 1000


async def test_a_worker_started_later_loads_the_marks(redis: RedisServer) -> None:
    prefix = f"late{time.monotonic_ns()}:"
    early = RedisState(redis.url, prefix=prefix)
    late = RedisState(redis.url, prefix=prefix)
    try:
        await early.publish_mark(MarkKind.USER, "auth0|u", 42, 60)
        await late.start()
        assert late.mark(MarkKind.USER, "auth0|u") == 42
    finally:
        await early.aclose()
        await late.aclose()


async def test_redis_away_is_a_quick_error_and_recovery_needs_no_restart() -> None:
    # A server of its own: this test stops and starts it.
    with redis_server() as server:
        await _away_and_back(server)


async def _away_and_back(server: RedisServer) -> None:
    prefix = f"away{time.monotonic_ns()}:"
    state = RedisState(server.url, prefix=prefix, timeout=0.3)
    try:
        await state.start()
        server.stop()
        started = time.monotonic()
        with pytest.raises(SharedStateError) as info:
            await state.get_flag("x")
        assert time.monotonic() - started < 2  # a timeout, not a stalled event loop
        assert info.value.__cause__ is not None
        # A mark made while Redis is away still holds in this worker.
        with pytest.raises(SharedStateError):
            await state.publish_mark(MarkKind.SESSION, "sid-x", 7, 60)
        assert state.mark(MarkKind.SESSION, "sid-x") == 7
        server.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                await state.put_flag("back", 1, 60)
                break
            except SharedStateError:
                await asyncio.sleep(0.1)
        assert await state.get_flag("back") == 1
        assert await state.wait_subscribed(5)
        # The mark Redis missed is sent once it is back: a replica starting now (or one
        # that was following all along) learns it too.
        late = RedisState(server.url, prefix=prefix)
        try:
            deadline = time.monotonic() + 5
            while late.mark(MarkKind.SESSION, "sid-x") is None and time.monotonic() < deadline:
                await late.aclose()
                late = RedisState(server.url, prefix=prefix)
                await late.start()
                await asyncio.sleep(0.1)
            assert late.mark(MarkKind.SESSION, "sid-x") == 7
        finally:
            await late.aclose()
    finally:
        if server.process is None:
            server.start()
        await state.aclose()


async def test_a_lock_held_longer_than_its_expiry_stays_held(
    pair: tuple[RedisState, RedisState], monkeypatch: pytest.MonkeyPatch
) -> None:
    import consent_middleware._redis_state as module

    monkeypatch.setattr(module, "LOCK_TTL", 0.3)
    a, b = pair
    events: list[str] = []

    async def slow_holder() -> None:
        async with a.lock("consent:u"):
            events.append("a in")
            await asyncio.sleep(1.0)  # more than three expiries: kept alive meanwhile
            events.append("a out")

    async def second() -> None:
        await asyncio.sleep(0.1)
        async with b.lock("consent:u"):
            events.append("b in")

    await asyncio.gather(slow_holder(), second())
    assert events == ["a in", "a out", "b in"]
