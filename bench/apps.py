"""The three apps the benchmark compares, each serving the same trivial endpoint.

(a) bare Starlette; (b) behind ConsentMiddleware with a valid, consented session;
(c) what people write by hand today: Starlette's SessionMiddleware (signed, not
encrypted) plus a claim check in a middleware.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

from itsdangerous import TimestampSigner
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from consent_middleware import ConsentMiddleware, Session, Settings, TokenSet
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


def settings() -> Settings:
    return Settings(
        domain="https://tenant.example.com",
        client_id="bench",
        client_secret="bench-secret",
        secret=SECRET,
        app_base_url="http://127.0.0.1:8000",
        consent_claim=CLAIM,
        terms_version=VERSION,
        terms_url="https://app.example.com/terms",
    )


def bare() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def gated() -> Starlette:
    return Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(ConsentMiddleware, settings=settings())]
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


def gate_cookie(claims: dict[str, object] | None = None) -> str:
    session = Session.from_claims(
        claims or CLAIMS,
        TokenSet(
            access_token="a" * 800,
            id_token="i" * 900,
            refresh_token="r" * 40,
            expires_at=int(time.time()) + 86400,
            scope="openid profile email offline_access",
        ),
    )
    header = asyncio.run(CookieSessionStore(settings()).save(session, {}))[0].decode()
    return header.split(";")[0]


def hand_written_cookie() -> str:
    # Starlette's SessionMiddleware format: base64(JSON) signed with itsdangerous.
    data = base64.b64encode(json.dumps({"user": CLAIMS}).encode())
    signed: bytes = TimestampSigner(SECRET).sign(data)
    return "session=" + signed.decode()


APPS = {"bare": bare, "gate": gated, "hand": hand_written}


def request_cookie() -> str:
    """The one Cookie header every app gets, so all three parse the same request and the
    difference measured is the middleware, not the header size."""
    return f"{gate_cookie()}; {hand_written_cookie()}"


# uvicorn --factory bench.apps:app with BENCH_APP=bare|gate|hand
def app() -> Starlette:
    return APPS[os.environ["BENCH_APP"]]()
