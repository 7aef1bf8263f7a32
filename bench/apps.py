"""The apps the benchmark compares, each serving the same trivial endpoint.

(a) bare Starlette; (b) behind ConsentMiddleware with a valid, consented session;
(c) what people write by hand today: Starlette's SessionMiddleware (signed, not
encrypted) plus a claim check in a middleware; (d) behind ConsentMiddleware with the
session in Redis (``BENCH_REDIS_URL``), the cookie holding only its id; (e) behind a
middleware that only adds ``Vary: Cookie``: what any gate whose answer depends on the
cookie must do at least, so the gate's own cost is what it adds beyond (e); (f) a
middleware that only computes for 5 µs; (g) a middleware that only looks the session
cookie up in a dict, the least any cache keyed by the cookie does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable
from typing import Any

from itsdangerous import TimestampSigner
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consent_middleware import ConsentMiddleware, Session, Settings, TokenSet, get_access_token
from consent_middleware._admission_cache import KEY_TAIL
from consent_middleware._cookies import joined_cookie_header, session_cookies
from consent_middleware._responses import with_vary_cookie
from consent_middleware._session import CookieSessionStore

CLAIM = "https://consent.example.com/consent"
VERSION = "2026-11"
SECRET = "bench-secret-0123456789abcdef0123456789"
CLAIMS = {
    "sub": "auth0|bench",
    "email": "bench@example.com",
    "name": "Bench User",
    CLAIM: {
        "given": True,
        "version": VERSION,
        "date": "2026-11-01T00:00:00.000Z",
        "text_details": "https://app.example.com/terms",
    },
}


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def settings(**overrides: Any) -> Settings:
    # CONSENT_ADMISSION_CACHE_MB=24 scripts/bench.sh measures the gate with a larger cache.
    cache_mb = int(os.environ.get("CONSENT_ADMISSION_CACHE_MB", Settings.admission_cache_mb))
    return Settings(
        domain="https://tenant.example.com",
        client_id="bench",
        client_secret="bench-secret",
        secret=SECRET,
        app_base_url="http://127.0.0.1:8000",
        consent_claim=CLAIM,
        terms_version=VERSION,
        terms_url="https://app.example.com/terms",
        admission_cache_mb=cache_mb,
        **overrides,
    )


def redis_settings() -> Settings:
    return settings(redis_url=os.environ["BENCH_REDIS_URL"], session_store="redis")


def bare() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def gated() -> Starlette:
    return Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(ConsentMiddleware, settings=settings())]
    )


async def with_token(request: Request) -> Response:
    # The user's access token, as an API route would take it before calling its API.
    token = await get_access_token(request)
    return PlainTextResponse(token.token[:5])


def gated_token() -> Starlette:
    """(b) with a route that calls get_access_token(): a valid token costs no I/O."""
    return Starlette(
        routes=[Route("/", with_token)],
        middleware=[Middleware(ConsentMiddleware, settings=settings())],
    )


def gated_redis() -> Starlette:
    return Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(ConsentMiddleware, settings=redis_settings())],
    )


class HandWrittenClaimCheck:
    """The usual hand-rolled gate on top of SessionMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            consent = scope["session"].get("user", {}).get(CLAIM) or {}
            if not (consent.get("given") is True and consent.get("version") == VERSION):
                await RedirectResponse("/consent", 303)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def hand_written() -> Starlette:
    return Starlette(
        routes=[Route("/", hello)],
        middleware=[
            Middleware(SessionMiddleware, secret_key=SECRET),
            Middleware(HandWrittenClaimCheck),
        ],
    )


class VaryCookieOnly:
    """The floor of a cookie gate: wraps ``send`` to add ``Vary: Cookie``, decides nothing.
    Written the cheapest way (the wrapper returns the wrapped send's awaitable), as the gate
    does, so (b) against (e) is the gate's own work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def send_varied(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"vary", b"Cookie")]
            return send(message)

        await self.app(scope, receive, send_varied)


def vary_only() -> Starlette:
    return Starlette(routes=[Route("/", hello)], middleware=[Middleware(VaryCookieOnly)])


SPIN_NS = 5_000


class Spin:
    """A yardstick, not a gate: computes for ``SPIN_NS`` per request and decides nothing.
    Over loopback HTTP a request's cost is not the sum of its parts (wrk shares the cores,
    and a slower server leaves it waiting to be woken), so (f) shows what 5 µs of any
    middleware's work costs there, to read (b) against."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            end = time.perf_counter_ns() + SPIN_NS
            while time.perf_counter_ns() < end:
                pass
        await self.app(scope, receive, send)


def spin() -> Starlette:
    return Starlette(routes=[Route("/", hello)], middleware=[Middleware(Spin)])


class CookieLookupOnly:
    """(g) The least a gate that remembers cookies can do: find the session cookie (with
    the gate's own finder), look it up in a dict by its hash and confirm its end, hand
    the app what it found, add ``Vary: Cookie``. It decides nothing and checks no cookie
    (any value is remembered on its first request): (b)'s one-user figures, read against
    this, are the gate's decisions and what it hands over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.found: dict[int, tuple[bytes, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = session_cookies(joined_cookie_header(scope))
        digest = hash(key)
        entry = self.found.get(digest)
        if entry is None or entry[0] != key[-KEY_TAIL:]:
            entry = self.found[digest] = (key[-KEY_TAIL:], time.time())
        scope["bench.found"] = entry

        def send_varied(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = with_vary_cookie(message.get("headers", ()))
            return send(message)

        await self.app(scope, receive, send_varied)


def lookup_only() -> Starlette:
    return Starlette(routes=[Route("/", hello)], middleware=[Middleware(CookieLookupOnly)])


def bench_session(claims: dict[str, object] | None = None) -> Session:
    return Session.from_claims(
        claims or CLAIMS,
        TokenSet(
            access_token="a" * 800,
            id_token="i" * 900,
            refresh_token="r" * 40,
            expires_at=int(time.time()) + 86400,
            scope="openid profile email offline_access",
        ),
    )


async def sealed_cookie(store: CookieSessionStore, claims: dict[str, object] | None = None) -> str:
    header = (await store.save(bench_session(claims), {}))[0].decode()
    return header.split(";")[0]


def gate_cookie(claims: dict[str, object] | None = None) -> str:
    return asyncio.run(sealed_cookie(CookieSessionStore(settings()), claims))


def redis_gate_cookie() -> str:
    """A consented session stored in Redis; the cookie that points at it."""

    # Imported here: the other apps' processes must not load the Redis client (its
    # memory would count against the gate's RSS, which does not use it).
    from consent_middleware._redis_sessions import RedisSessionStore
    from consent_middleware._redis_state import RedisState

    async def store() -> bytes:
        state = RedisState(os.environ["BENCH_REDIS_URL"])
        try:
            return (await RedisSessionStore(redis_settings(), state).save(bench_session(), {}))[0]
        finally:
            await state.aclose()

    return asyncio.run(store()).decode().split(";")[0]


def hand_written_cookie() -> str:
    # Starlette's SessionMiddleware format: base64(JSON) signed with itsdangerous.
    data = base64.b64encode(json.dumps({"user": CLAIMS}).encode())
    signed: bytes = TimestampSigner(SECRET).sign(data)
    return "session=" + signed.decode()


APPS = {
    "bare": bare,
    "gate": gated,
    "hand": hand_written,
    "redis": gated_redis,
    "vary": vary_only,
    "spin": spin,
    "lookup": lookup_only,
}


def request_cookie(name: str = "gate") -> str:
    """The Cookie header an app gets: (a), (b), (c) and (e) the same one, so each parses the
    same request and the difference measured is the middleware, not the header size. (d)
    gets its own session cookie (the id of a session in Redis) in place of (b)'s."""
    session = redis_gate_cookie() if name == "redis" else gate_cookie()
    return f"{session}; {hand_written_cookie()}"


# uvicorn --factory bench.apps:app with BENCH_APP=bare|gate|hand|redis|vary|spin
def app() -> Starlette:
    return APPS[os.environ["BENCH_APP"]]()
