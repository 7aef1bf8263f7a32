"""``ConsentMiddleware``: serves the auth and consent routes and gates everything else."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import Settings
from ._consent import ConsentRoutes
from ._cookies import request_cookies
from ._engine import Engine
from ._gate import Verdict, decide, is_own_route, is_public, refusal, wants_json
from ._models import User
from ._refresh import (
    REFRESHED_SCOPE_KEY,
    REFRESHER_SCOPE_KEY,
    SESSION_SCOPE_KEY,
    SessionRefresher,
)
from ._routes import AuthRoutes
from ._session import Session, SessionStore

USER_SCOPE_KEY = "consent_middleware.user"


class ConsentMiddleware:
    """Pure ASGI: add it with ``app.add_middleware(ConsentMiddleware, settings=...)``."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        session_store: SessionStore | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.app = app
        # Read settings now, so a bad value stops start-up, not a request.
        self.settings = settings if settings is not None else Settings.from_env()
        self.engine = Engine.create(
            self.settings, session_store=session_store, http_client=http_client
        )
        self.refresher = SessionRefresher(self.engine)
        self.router = Router(
            routes=[
                *AuthRoutes(self.engine, self.refresher).routes(),
                *ConsentRoutes(self.engine, self.refresher).routes(),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        settings = self.settings
        if is_own_route(path, settings):
            await self.router(scope, receive, send)
            return
        if is_public(path, settings):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = request_cookies(headers)
        sessions = self.engine.sessions
        session = sessions.load(cookies)
        verdict = decide(session, settings)
        if verdict is not Verdict.ALLOW:
            query = scope.get("query_string", b"").decode("latin-1")
            return_to = path + (f"?{query}" if query else "")
            response = refusal(
                verdict, scope["method"], return_to, wants_json(path, headers, settings), settings
            )
            await response(scope, receive, send)
            return
        assert session is not None
        expose(scope, session, settings)
        scope[REFRESHER_SCOPE_KEY] = self.refresher
        roll = sessions.needs_roll(session)

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A refresh_session() call during the request wins over a plain roll.
                current = scope.get(REFRESHED_SCOPE_KEY)
                if current is not None or roll:
                    response_headers = MutableHeaders(scope=message)
                    for value in sessions.save(current or session, cookies):
                        response_headers.append("set-cookie", value.decode("latin-1"))
            await send(message)

        await self.app(scope, receive, send_with_session)

    async def aclose(self) -> None:
        await self.engine.oidc.aclose()


def expose(scope: Scope, session: Session, settings: Settings) -> None:
    user = User.from_claims(session.user, settings.consent_claim)
    scope[USER_SCOPE_KEY] = user
    scope[SESSION_SCOPE_KEY] = session
    state: dict[str, Any] = scope.setdefault("state", {})
    state["user"] = user
