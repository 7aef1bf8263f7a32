"""Bring a session's claims up to date without a logout.

Order: the refresh-token grant (no browser trip), then ``prompt=none`` through the
callback, then an interactive login when the provider needs the user. A flow that
expects a change (consent given, consent withdrawn) checks for it once and stops with
an explanation when it is not there, so no path can loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from cachetools import LRUCache, TTLCache
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response

from ._config import Settings
from ._exceptions import IdentityProviderError, RefreshError
from ._login import Login
from ._models import Consent
from ._oidc import OIDCClient
from ._pages import Pages
from ._session import Session, SessionStore
from ._transactions import Expectation, Purpose

logger = logging.getLogger("consent_middleware")

REFRESHER_SCOPE_KEY = "consent_middleware.refresher"
SESSION_SCOPE_KEY = "consent_middleware.session"
# A session refreshed during the request; the middleware writes its cookie on the way out.
REFRESHED_SCOPE_KEY = "consent_middleware.refreshed"

RECENT_REFRESH_TTL = 30.0


def expectation_met(session: Session, expect: Expectation | None, settings: Settings) -> bool:
    consent = Consent.from_claim(session.user.get(settings.consent_claim))
    covered = consent is not None and consent.covers(settings.terms_version)
    if expect is Expectation.CONSENT:
        return covered
    if expect is Expectation.WITHDRAWAL:
        return not covered
    return True


def with_cookies(response: Response, cookies: list[bytes]) -> Response:
    """``response`` with these ``Set-Cookie`` values appended."""
    for value in cookies:
        response.headers.append("set-cookie", value.decode("latin-1"))
    return response


class SessionRefresher:
    def __init__(
        self,
        settings: Settings,
        oidc: OIDCClient,
        sessions: SessionStore,
        login: Login,
        pages: Pages,
    ) -> None:
        self.settings = settings
        self.oidc = oidc
        self.sessions = sessions
        self.login = login
        self.pages = pages
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
        refresh_token = session.token_set.refresh_token
        if not refresh_token:
            raise RefreshError("the session holds no refresh token")
        lock = self._locks.get(session.sid)
        if lock is None:
            lock = self._locks[session.sid] = asyncio.Lock()
        async with lock:
            recent = self._recent.get(session.sid)
            if recent is not None and recent[0] == refresh_token:
                return recent[1]
            try:
                result = await self.oidc.refresh_token_grant(
                    refresh_token, sub=str(session.user.get("sub"))
                )
            except IdentityProviderError as exc:
                raise RefreshError(f"the refresh-token grant failed: {exc}") from exc
            refreshed = session.refreshed(result.claims, result.token_set)
            self._recent[session.sid] = (refresh_token, refreshed)
            return refreshed

    async def refresh_and_continue(
        self,
        connection: HTTPConnection,
        session: Session,
        return_to: str,
        expect: Expectation | None,
    ) -> Response:
        if session.token_set.refresh_token:
            try:
                refreshed = await self.refresh(session)
            except RefreshError as exc:
                logger.info("%s; trying prompt=none", exc)
            else:
                return await self.finish(connection.cookies, refreshed, return_to, expect)
        return await self.login.redirect(return_to, purpose=Purpose.SILENT, expect=expect)

    async def finish(
        self,
        cookies: Mapping[str, str],
        session: Session,
        return_to: str,
        expect: Expectation | None,
    ) -> Response:
        """Store the new session and go on, or stop at the loop guard's page."""
        if expectation_met(session, expect, self.settings):
            response: Response = RedirectResponse(return_to, status_code=303)
        else:
            assert expect is not None  # no expectation is always met
            response = self.pages.not_shown_by_provider(expect)
            if expect is Expectation.WITHDRAWAL:
                # A withdrawal the session cannot show must still stop the processing:
                # end the local session rather than keep a token that says "consented".
                return with_cookies(response, await self.sessions.clear(cookies))
        return with_cookies(response, await self.sessions.save(session, cookies))


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
