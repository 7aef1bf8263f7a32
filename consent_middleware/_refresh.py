"""Bring a session's claims up to date without a logout.

Order: the refresh-token grant (no browser trip), then ``prompt=none`` through the
callback, then an interactive login when the provider needs the user. A flow that
expects a change (consent given, consent withdrawn) checks for it once and stops with
an explanation when it is not there, so no path can loop.
"""

from __future__ import annotations

import asyncio
import logging

from cachetools import LRUCache, TTLCache
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response

from ._engine import Engine, append_cookies
from ._exceptions import IdentityProviderError, RefreshError
from ._models import Consent
from ._session import Session

logger = logging.getLogger("consent_middleware")

REFRESHER_SCOPE_KEY = "consent_middleware.refresher"
SESSION_SCOPE_KEY = "consent_middleware.session"
# A session refreshed during the request; the middleware writes its cookie on the way out.
REFRESHED_SCOPE_KEY = "consent_middleware.refreshed"

RECENT_REFRESH_TTL = 30.0

EXPECT_CONSENT = "consent"
EXPECT_WITHDRAWAL = "withdrawal"


def expectation_met(session: Session, expect: str | None, engine: Engine) -> bool:
    settings = engine.settings
    consent = Consent.from_claim(session.user.get(settings.consent_claim))
    covered = consent is not None and consent.covers(settings.terms_version)
    if expect == EXPECT_CONSENT:
        return covered
    if expect == EXPECT_WITHDRAWAL:
        return not covered
    return True


def misconfigured(engine: Engine, expect: str | None) -> Response:
    what = "the accepted terms" if expect == EXPECT_CONSENT else "the withdrawal"
    return engine.error_page(
        "Consent saved, but the sign-in does not show it",
        f"Your choice was saved, but the identity provider's new ID token does not carry "
        f"{what} in the {engine.settings.consent_claim} claim. The post-login Action that "
        "copies user_metadata.consent into the ID token is probably missing or not deployed. "
        "Please tell the site's administrator.",
        502,
    )


class SessionRefresher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # One refresh grant per session at a time: with rotating refresh tokens, two
        # concurrent grants would spend the same token and the second would fail.
        self._locks: LRUCache[str, asyncio.Lock] = LRUCache(maxsize=10_000)
        # What the last grant of each session gave, by the refresh token it spent: requests
        # that queued behind that grant (other tabs, same cookie) take its result instead
        # of spending a rotated-away token.
        self._recent: TTLCache[str, tuple[str, Session]] = TTLCache(
            maxsize=10_000, ttl=RECENT_REFRESH_TTL
        )

    async def refresh(self, session: Session) -> Session:
        """The refresh-token grant only; raises RefreshError when it cannot be done."""
        lock = self._locks.get(session.sid)
        if lock is None:
            lock = self._locks[session.sid] = asyncio.Lock()
        async with lock:
            spent = session.token_set.refresh_token
            recent = self._recent.get(session.sid)
            if spent and recent is not None and recent[0] == spent:
                return recent[1]
            try:
                refreshed = await self.engine.oidc.refresh(session)
            except IdentityProviderError as exc:
                raise RefreshError(f"the refresh-token grant failed: {exc}") from exc
            if spent:
                self._recent[session.sid] = (spent, refreshed)
            return refreshed

    async def refresh_and_continue(
        self,
        connection: HTTPConnection,
        session: Session,
        return_to: str,
        expect: str | None,
    ) -> Response:
        engine = self.engine
        if session.token_set.refresh_token:
            try:
                refreshed = await self.refresh(session)
            except RefreshError as exc:
                logger.info("%s; trying prompt=none", exc)
            else:
                return self.finish(connection, refreshed, return_to, expect)
        return await engine.start_login(return_to, purpose="silent", expect=expect)

    def finish(
        self, connection: HTTPConnection, session: Session, return_to: str, expect: str | None
    ) -> Response:
        """Store the new session and go on, or stop at the loop guard's page."""
        engine = self.engine
        if expectation_met(session, expect, engine):
            response: Response = RedirectResponse(return_to, status_code=303)
        else:
            response = misconfigured(engine, expect)
            if expect == EXPECT_WITHDRAWAL:
                # A withdrawal the session cannot show must still stop the processing:
                # end the local session rather than keep a token that says "consented".
                return append_cookies(response, engine.sessions.clear(connection.cookies))
        return append_cookies(response, engine.sessions.save(session, connection.cookies))


async def refresh_session(connection: HTTPConnection) -> Session:
    """Refresh the current user's session with the refresh-token grant.

    For apps that change ``user_metadata`` themselves and want the new claims at once.
    Call it from a route behind the gate; the new cookie is set on the response.
    Raises ``RefreshError`` when the session has no usable refresh token.
    """
    refresher = connection.scope.get(REFRESHER_SCOPE_KEY)
    session = connection.scope.get(SESSION_SCOPE_KEY)
    if not isinstance(refresher, SessionRefresher) or not isinstance(session, Session):
        raise RefreshError("refresh_session() needs a request that passed ConsentMiddleware")
    refreshed = await refresher.refresh(session)
    connection.scope[SESSION_SCOPE_KEY] = refreshed
    connection.scope[REFRESHED_SCOPE_KEY] = refreshed
    return refreshed
