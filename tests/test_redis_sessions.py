"""RedisSessionStore against a real redis-server: two workers' stores over one Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from consent_middleware import Session, TokenSet
from consent_middleware._jose import decrypt, derive_key, encrypt
from consent_middleware._redis_sessions import RedisSessionStore
from consent_middleware._redis_state import RedisState
from tests.conftest import make_settings
from tests.redis_server import RedisServer
from tests.test_session import jar

pytestmark = pytest.mark.anyio
SETTINGS = make_settings()


@pytest.fixture
async def stores(redis: RedisServer) -> AsyncIterator[tuple[RedisSessionStore, RedisSessionStore]]:
    prefix = f"s{time.monotonic_ns()}:"
    states = [RedisState(redis.url, prefix=prefix) for _ in range(2)]
    try:
        for state in states:
            await state.start()
        yield RedisSessionStore(SETTINGS, states[0]), RedisSessionStore(SETTINGS, states[1])
    finally:
        for state in states:
            await state.aclose()


def session(sub: str = "auth0|1", sid: str = "sid-1") -> Session:
    return Session.from_claims(
        {"sub": sub, "sid": sid, "email": "a@b.c"},
        TokenSet("at", "idt", "rt", int(time.time()) + 3600),
    )


async def test_the_cookie_holds_only_an_id_and_any_worker_reads_it(
    stores: tuple[RedisSessionStore, RedisSessionStore],
) -> None:
    a, b = stores
    cookies = jar(await a.save(session(), {}))
    payload = decrypt(cookies["__session"], [derive_key(SETTINGS.secret)])
    assert payload is not None and set(payload) == {"id", "exp"}  # nextjs-auth0 stateful
    loaded = await b.load(cookies)
    assert loaded is not None and loaded.sid == "sid-1" and loaded.token_set.access_token == "at"
    redis = a.redis
    key = f"{a.state.prefix}session:{payload['id']}"
    assert 0 < await redis.pttl(key) <= SETTINGS.inactivity_duration * 1000
    assert await redis.sismember(f"{a.state.prefix}sid:sid-1", payload["id"])
    assert await redis.sismember(f"{a.state.prefix}sub:auth0|1", payload["id"])


async def test_a_roll_keeps_the_id_and_a_new_login_gets_a_new_one(
    stores: tuple[RedisSessionStore, RedisSessionStore],
) -> None:
    a, b = stores
    first = session()
    cookies = jar(await a.save(first, {}))
    old_id = decrypt(cookies["__session"], [derive_key(SETTINGS.secret)])["id"]  # type: ignore[index]
    rolled = jar(await a.save(first, cookies))
    assert decrypt(rolled["__session"], [derive_key(SETTINGS.secret)])["id"] == old_id  # type: ignore[index]
    # A login in the same browser is a new session: a new id, the old one gone (no fixation).
    relogin = jar(await a.save(session(sid="sid-2"), rolled))
    new_id = decrypt(relogin["__session"], [derive_key(SETTINGS.secret)])["id"]  # type: ignore[index]
    assert new_id != old_id
    assert await a.redis.get(f"{a.state.prefix}session:{old_id}") is None
    assert await b.load(rolled) is None and await b.load(relogin) is not None


async def test_logout_by_sid_or_sub_reaches_the_other_worker_at_once(
    stores: tuple[RedisSessionStore, RedisSessionStore],
) -> None:
    a, b = stores
    one = jar(await a.save(session(sid="sid-a"), {}))
    two = jar(await a.save(session(sid="sid-b"), {}))
    other_user = jar(await a.save(session(sub="auth0|2", sid="sid-c"), {}))
    for cookies in (one, two, other_user):
        assert await b.load(cookies) is not None  # b now holds its own copies
    assert await a.delete_by(sid="sid-a") == 1
    await asyncio.sleep(0.1)  # the announcement reaches b
    assert await b.load(one) is None and await b.load(two) is not None
    assert await a.delete_by(sub="auth0|1") >= 1
    await asyncio.sleep(0.1)
    assert await b.load(two) is None and await b.load(other_user) is not None
    assert await a.delete_by() == 0
    cleared = await b.clear(other_user)
    assert any(c.startswith(b"__session=;") or b"Max-Age=0" in c for c in cleared)
    await asyncio.sleep(0.1)
    assert await a.load(other_user) is None


async def test_foreign_tampered_oversized_and_expired_cookies_mean_no_session(
    stores: tuple[RedisSessionStore, RedisSessionStore],
) -> None:
    a, _ = stores
    key = derive_key(SETTINGS.secret)
    assert await a.load({}) is None
    assert await a.load({"__session": "garbage"}) is None
    assert await a.load({"__session": "x" * 5000}) is None
    unknown = encrypt({"id": "no-such-id"}, key, int(time.time()) + 60)
    assert await a.load({"__session": unknown}) is None
    no_id = encrypt({"user": "x"}, key, int(time.time()) + 60)
    assert await a.load({"__session": no_id}) is None
    expired_cookie = encrypt({"id": "x"}, key, int(time.time()) - 60)
    assert await a.load({"__session": expired_cookie}) is None
    # The cookie outlives its session (written with an expiry already past): no session.
    cookies = jar(await a.save(session(), {}, now=time.time() - SETTINGS.absolute_duration))
    assert await a.load(cookies) is None
