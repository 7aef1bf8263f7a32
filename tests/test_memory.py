"""A measured memory bound: state a client can grow (its cookies) does not grow the process."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from starlette.types import ASGIApp

from consent_middleware import ConsentMiddleware, Session, TokenSet
from consent_middleware._admissions import USER_SCOPE_KEY
from consent_middleware._cookies import session_cookies as session_key
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, make_settings
from tests.test_session import jar

REQUESTS = 4096
EXTRA_COOKIE_BYTES = 60 * 1024
# Keyed by the whole Cookie header, the admitted cache kept every distinct header:
# 4,096 x 60 KB, about 250 MB. Keyed by the session's cookies alone, it keeps one entry.
MAX_GROWTH = 40 * 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """The process's resident set now (not its peak), after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def scope_for(cookie: bytes) -> dict[str, Any]:
    return {
        "type": "http", "method": "GET", "path": "/private", "raw_path": b"/private",
        "query_string": b"", "scheme": "https", "root_path": "",
        "headers": [(b"host", b"app.example.com"), (b"accept", b"text/html"), (b"cookie", cookie)],
        "server": ("app.example.com", 443), "client": ("127.0.0.1", 1),
    }  # fmt: skip


def cookie_headers(session_cookie: bytes, count: int) -> Iterator[bytes]:
    """``count`` Cookie headers, the session plus a different random ~60 KB cookie each,
    made one at a time so the test itself holds only one of them."""
    for _ in range(count):
        extra = os.urandom(EXTRA_COOKIE_BYTES // 2).hex().encode()
        yield session_cookie + b"; tracking=" + extra


def test_random_extra_cookies_do_not_grow_memory() -> None:
    settings = make_settings()
    session = Session.from_claims(
        {"sub": "auth0|mem", CLAIM: {"given": True, "version": "v2", "date": "2026-01-01"}},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    cookies = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    session_cookie = "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()
    gate = ConsentMiddleware(ok, settings=settings)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> int:
        try:
            # Warm up (first decryption, caches, allocator) before the baseline.
            for cookie in cookie_headers(session_cookie, 16):
                await gate(scope_for(cookie), receive, send)
            before = resident_bytes()
            for cookie in cookie_headers(session_cookie, REQUESTS):
                await gate(scope_for(cookie), receive, send)
            del cookie
            return resident_bytes() - before
        finally:
            await gate.aclose()

    growth = asyncio.run(run())
    assert statuses == [200] * (16 + REQUESTS)
    assert growth < MAX_GROWTH, f"resident memory grew by {growth / 2**20:.1f} MB"
    assert len(gate._admissions.cache) == 1


def test_a_gated_request_leaves_nothing_for_the_collector() -> None:
    # A reference cycle per request (the scope pointing at an object that points back at
    # the scope) keeps every request's objects alive until a collection, which then has
    # to find them: on the gate's path that is the collector's work on every request.
    settings = make_settings()
    store = CookieSessionStore(settings)
    claims = {"sub": "auth0|gc", CLAIM: {"given": True, "version": "v2", "date": "2026-01-01"}}
    tokens = TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600)
    # Known (answered from the cache), new (the cold path), and one due to roll.
    known = "; ".join(f"{k}={v}" for k, v in jar(asyncio.run(
        store.save(Session.from_claims(claims, tokens), {})
    )).items()).encode()  # fmt: skip
    due = Session.from_claims(claims, tokens)
    rolled = jar(
        asyncio.run(store.save(due, {}, now=time.time() - settings.inactivity_duration / 2))
    )
    due_cookie = "; ".join(f"{k}={v}" for k, v in rolled.items()).encode()
    gate = ConsentMiddleware(ok, settings=settings)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async def run() -> int:
        fresh = [
            "; ".join(f"{k}={v}" for k, v in jar(await store.save(
                Session.from_claims({**claims, "sub": f"auth0|gc{i}"}, tokens), {}
            )).items()).encode()
            for i in range(50)
        ]  # fmt: skip
        await gate(scope_for(known), receive, send)
        gc.collect()
        gc.disable()
        try:
            for cookie in [known] * 50 + fresh + [due_cookie] * 5:
                await gate(scope_for(cookie), receive, send)
            return gc.collect()
        finally:
            gc.enable()
            await gate.aclose()

    assert asyncio.run(run()) == 0


SHAPES: dict[str, dict[str, Any]] = {
    "minimal": {},
    "profile": {"email": "ada@example.com", "name": "Ada Lovelace", "email_verified": True},
    "many values": {f"claim_{i}": f"value-{i}" for i in range(20)},
    "a long value": {"picture": "https://cdn.example.com/" + "p" * 2000},
    "nested": {"groups": [f"group-{i}" for i in range(30)], "org": {"id": "o1", "n": 2}},
    "long keys": {f"https://claims.example.com/{'k' * 80}/{i}": i for i in range(10)},
    "purposes": {"purposes": {p: {"given": True, "version": "1", "date": 1764000000000}
                              for p in ("marketing", "analytics", "research")}},
}  # fmt: skip


async def reads_user(scope: Any, receive: Any, send: Any) -> None:
    user = scope[USER_SCOPE_KEY]
    assert user.consent is not None and user.claims["sub"] == user.sub
    await ok(scope, receive, send)


@pytest.mark.parametrize("app", [ok, reads_user], ids=["user not read", "user read"])
def test_the_cache_weighs_its_entries_as_tracemalloc_counts_them(app: ASGIApp) -> None:
    # The cache's budget is only a bound on memory if each entry's weight is what it
    # holds: measured here through the gate, for claims of every shape, whether the
    # route reads the user (the entry keeps their claims) or not.
    settings = make_settings()
    store = CookieSessionStore(settings)
    tokens = TokenSet("a" * 800, "i" * 900, "rt", expires_at=int(time.time()) + 3600)

    async def run(extra: dict[str, Any]) -> tuple[float, float]:
        consent: dict[str, Any] = {"given": True, "version": "v2", "date": "2026-01-01"}
        if "purposes" in extra:
            consent["purposes"] = extra["purposes"]
            extra = {}
        cookies = []
        for i in range(300):
            claims = {"sub": f"auth0|w{i:04d}", **extra, CLAIM: consent}
            saved = await store.save(Session.from_claims(claims, tokens), {})
            cookies.append("; ".join(f"{k}={v}" for k, v in jar(saved).items()).encode())
        gate = ConsentMiddleware(app, settings=settings)
        try:
            await gate(scope_for(cookies[0]), receive_nothing, ignore)
            cache = gate._admissions.cache
            cache.discard(cache.get(session_key(cookies[0])))
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for cookie in cookies:  # each scope dropped after its request, as a server does
                await gate(scope_for(cookie), receive_nothing, ignore)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert len(cache) == len(cookies)
            return cache.weight / len(cache), held / len(cache)
        finally:
            await gate.aclose()

    for name, extra in SHAPES.items():
        weighed, held = asyncio.run(run(extra))
        assert held <= weighed <= 1.1 * held, f"{name}: weighed {weighed:.0f}, holds {held:.0f}"


async def receive_nothing() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def ignore(message: MutableMapping[str, Any]) -> None:
    pass
