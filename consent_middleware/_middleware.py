"""``ConsentMiddleware``: serves the auth and consent routes and gates everything else."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from cachetools import LRUCache
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import Settings
from ._cookies import request_cookies
from ._engine import Engine
from ._gate import Verdict, decide, is_own_route, is_public, refusal, wants_json
from ._models import User
from ._refresh import REFRESHED_SCOPE_KEY, REFRESHER_SCOPE_KEY, SESSION_SCOPE_KEY
from ._session import Session, SessionStore

USER_SCOPE_KEY = "consent_middleware.user"
ADMITTED_CACHE_SIZE = 4096
REVALIDATE_AFTER = 60.0


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
        # Requests already admitted, keyed by their raw Cookie header: a consented user's
        # request costs one dict lookup, no decryption and no parsing. Bounded, and each entry
        # is re-checked by the full path after REVALIDATE_AFTER seconds or at session expiry.
        self._admitted: LRUCache[bytes, _Admitted] = LRUCache(maxsize=ADMITTED_CACHE_SIZE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = self._closing_on_shutdown(send)
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        settings = self.settings
        if is_own_route(path, settings):
            await self.engine.serve_own_route(scope, receive, send)
            return
        if is_public(path, settings):
            await self.app(scope, receive, send)
            return
        raw = _cookie_header(scope)
        now = time.time()
        admitted = self._admitted.get(raw) if raw else None
        if admitted is None or admitted.until < now:
            checked = await self._admit(scope, raw, now)
            if isinstance(checked, Verdict):
                await self._refuse(checked, scope, receive, send)
                return
            admitted = checked
        scope[USER_SCOPE_KEY] = admitted.user
        scope[SESSION_SCOPE_KEY] = admitted.session
        scope.setdefault("state", {})["user"] = admitted.user
        scope[REFRESHER_SCOPE_KEY] = self.engine.refresher
        roll = admitted.roll
        sessions = self.engine.sessions

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A refresh_session() call during the request wins over a plain roll.
                current = scope.get(REFRESHED_SCOPE_KEY)
                if current is not None or roll:
                    cookies = request_cookies(Headers(scope=scope))
                    response_headers = MutableHeaders(scope=message)
                    for value in await sessions.save(current or admitted.session, cookies):
                        response_headers.append("set-cookie", value.decode("latin-1"))
            await send(message)

        await self.app(scope, receive, send_with_session)

    async def _admit(self, scope: Scope, raw: bytes, now: float) -> _Admitted | Verdict:
        """The full check: decrypt (or the store's cache), decide."""
        sessions = self.engine.sessions
        session = await sessions.load(request_cookies(Headers(scope=scope)))
        verdict = decide(session, self.settings)
        if verdict is not Verdict.ALLOW or session is None:
            return verdict
        user = User.from_claims(session.user, self.settings.consent_claim)
        roll = sessions.needs_roll(session, now)
        until = min(session.expires_at, now + REVALIDATE_AFTER)
        admitted = _Admitted(session, user, roll, until)
        # A session due to roll gets a new cookie on this response; caching the old value
        # would only keep it alive. And only a self-contained store's cookie is the whole
        # session: a server-side store can end a session behind an unchanged cookie.
        if not roll and sessions.self_contained:
            self._admitted[raw] = admitted
        return admitted

    async def _refuse(self, verdict: Verdict, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        return_to = path + (f"?{query}" if query else "")
        as_json = wants_json(path, Headers(scope=scope), self.settings)
        response = refusal(verdict, scope["method"], return_to, as_json, self.settings)
        await response(scope, receive, send)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return wrapped

    async def aclose(self) -> None:
        """Close the HTTP client the middleware created (done at lifespan shutdown)."""
        await self.engine.aclose()


@dataclass(frozen=True, slots=True)
class _Admitted:
    session: Session
    user: User
    roll: bool
    until: float


def _cookie_header(scope: Scope) -> bytes:
    # Straight off the scope: no Headers object and no parsing on the hot path.
    for name, value in scope["headers"]:
        if name == b"cookie":
            return bytes(value)
    return b""
