"""LocalState: what one worker keeps in memory, bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from consent_middleware import _state
from consent_middleware._state import LocalState, MarkKind

pytestmark = pytest.mark.anyio


async def test_counter_window_starts_with_the_first_hit_and_resets() -> None:
    state = LocalState()
    assert (await state.incr("k", 0.05))[0] == 1
    count, reset_in = await state.incr("k", 0.05)
    assert count == 2 and 0 < reset_in <= 0.05
    await asyncio.sleep(0.06)
    assert (await state.incr("k", 0.05))[0] == 1


async def test_flags_and_blobs_expire() -> None:
    state = LocalState()
    await state.put_flag("f", 7, 0.05)
    await state.put_blob("b", b"sealed", 0.05)
    assert await state.get_flag("f") == 7 and await state.get_blob("b") == b"sealed"
    await asyncio.sleep(0.06)
    assert await state.get_flag("f") is None and await state.get_blob("b") is None
    await state.put_flag("g", 1, 60)
    await state.drop_flag("g")
    assert await state.get_flag("g") is None


async def test_marks_keep_the_newest_and_expire() -> None:
    state = LocalState()
    assert not state.has_marks
    await state.publish_mark(MarkKind.USER, "u", 200, 60)
    await state.publish_mark(MarkKind.USER, "u", 100, 60)
    assert state.mark(MarkKind.USER, "u") == 200 and state.has_marks
    state.apply_mark(MarkKind.SESSION, "s", 5, time.time() - 1)  # already expired
    assert state.mark(MarkKind.SESSION, "s") is None
    assert state.mark(MarkKind.USER_ENDED, "u") is None


async def test_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_state, "MAX_COUNTERS", 3)
    monkeypatch.setattr(_state, "MAX_MARKS", 3)
    monkeypatch.setattr(_state, "MAX_BLOB_BYTES", 1000)
    state = LocalState()
    for i in range(10):
        await state.incr(f"c{i}", 60)
        await state.put_flag(f"f{i}", i, 60)
        await state.publish_mark(MarkKind.SESSION, f"s{i}", i, 60)
    assert len(state._counters) == 3 and len(state._flags) == 3
    # A live mark is never dropped to make room: that would bring an ended session back.
    assert all(state.mark(MarkKind.SESSION, f"s{i}") == i for i in range(10))
    # Expired ones do make room.
    for i in range(10):
        state.apply_mark(MarkKind.USER, f"u{i}", i, time.time() - 1)
    await state.publish_mark(MarkKind.USER, "fresh", 1, 60)
    assert len(state._marks[MarkKind.USER]) <= 3 and state.mark(MarkKind.USER, "fresh") == 1


async def test_locks_exclude_and_are_released() -> None:
    state = LocalState()
    inside = most = 0

    async def hold() -> None:
        nonlocal inside, most
        async with state.lock("k"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(hold() for _ in range(4)))
    assert most == 1
    await state.start()
    await state.aclose()
