"""Bring a session's claims up to date without a logout.

Order: the refresh-token grant (no browser trip), then ``prompt=none`` through the
callback, then an interactive login when the provider needs the user. A flow that
expects a change (consent given, consent withdrawn) checks for it once and stops with
an explanation when it is not there, so no path can loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from cachetools import LRUCache
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response

from ._config import Settings
from ._exceptions import IdentityProviderError, RefreshError
from ._login import Login
from ._models import Consent
from ._oidc import OIDCClient
from ._pages import Pages
from ._revocation import Revocation, Revocations
from ._session import Session, SessionStore
from ._transactions import Expectation, Purpose

logger = logging.getLogger("consent_middleware")

REFRESHER_SCOPE_KEY = "consent_middleware.refresher"
SESSION_SCOPE_KEY = "consent_middleware.session"
# A session refreshed during the request; the middleware writes its cookie on the way out.
REFRESHED_SCOPE_KEY = "consent_middleware.refreshed"

# How long the result of a grant that rotated the refresh token is handed to requests that
# still hold the spent token (sent before the new cookie reached the browser).
ROTATED_RESULT_TTL = 30.0
# Memory the table of recent grants may take, estimated from the tokens it holds.
GRANTS_BYTES = 16 * 1024 * 1024


def expectation_met(session: Session, expect: Expectation | None, settings: Settings) -> bool:
    consent = Consent.from_claim(session.user.get(settings.consent_claim))
    covered = consent is not None and consent.covers(settings.terms_version)
    if expect is Expectation.CONSENT:
        return covered
    if expect is Expectation.WITHDRAWAL:
        return not covered
    return True


@dataclass
class _Grant:
    """One refresh-token grant of one session: in flight, or recently done."""

    spent: str
    started: float
    result: asyncio.Future[Session] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    finished: float = 0.0
    rotated: bool = False

    def serves(self, refresh_token: str, not_before: float, now: float) -> bool:
        """Whether a request holding ``refresh_token`` may take this grant's result."""
        if self.spent != refresh_token or self.started < not_before:
            return False
        # Requests waiting on it take its result; once it is done, only a rotated token
        # (dead now, so a new grant would fail) is served from it, and only for a while.
        if not self.result.done():
            return True
        return self.rotated and now - self.finished < ROTATED_RESULT_TTL

    def successor(self, refresh_token: str) -> Session | None:
        """The session this grant made from ``refresh_token``, if it rotated that token."""
        done = self.result.done() and self.result.exception() is None
        if done and self.rotated and self.spent == refresh_token:
            return self.result.result()
        return None


def _weight(grant: _Grant) -> int:
    # The result is not known when the grant is stored: count the spent token and room for
    # the session that replaces it (tokens come back at about the size they went out).
    return 8 * len(grant.spent) + 8 * 1024


def _fail(grant: _Grant, failure: RefreshError) -> None:
    grant.finished = time.time()
    grant.result.set_exception(failure)
    grant.result.exception()  # marked retrieved: the waiters get it, nobody else must


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
        revocations: Revocations,
        pages: Pages,
    ) -> None:
        self.settings = settings
        self.oidc = oidc
        self.sessions = sessions
        self.revocations = revocations
        self.login = login
        self.pages = pages
        # The latest grant of each session: with rotating refresh tokens, two concurrent
        # grants would spend the same token and the second would fail, so requests that
        # arrive while one runs wait for it and take its result.
        self._grants: LRUCache[str, _Grant] = LRUCache(maxsize=GRANTS_BYTES, getsizeof=_weight)

    async def refresh(self, session: Session, *, not_before: float = 0.0) -> Session:
        """The refresh-token grant only; raises RefreshError when it cannot be done.

        ``not_before`` (Unix seconds): a grant started earlier is not good enough, because
        the caller changed the user's record after that and needs claims that show it.
        """
        refresh_token = session.token_set.refresh_token
        if not refresh_token:
            raise RefreshError("the session holds no refresh token")
        while True:
            grant = self._grants.get(session.sid)
            if grant is None:
                break
            if grant.serves(refresh_token, not_before, time.time()):
                return await asyncio.shield(grant.result)
            successor = grant.successor(refresh_token)
            if successor is not None and successor.token_set.refresh_token:
                # That grant rotated our token away, but its claims are too old for us: go
                # on from the token it handed out rather than spend a dead one (which a
                # provider with reuse detection answers by revoking the whole family).
                session = successor
                refresh_token = successor.token_set.refresh_token
                continue
            if grant.result.done():
                break
            # One grant per session at a time: wait for the running one, then look again.
            await asyncio.wait([grant.result])
        return await self._grant(session, refresh_token)

    async def _grant(self, session: Session, refresh_token: str) -> Session:
        grant = _Grant(refresh_token, time.time())
        self._grants[session.sid] = grant
        try:
            result = await self.oidc.refresh_token_grant(
                refresh_token, sub=str(session.user.get("sub"))
            )
        except IdentityProviderError as exc:
            failure = RefreshError(f"the refresh-token grant failed: {exc}")
            _fail(grant, failure)
            raise failure from exc
        except BaseException:
            # Cancelled (the client went away) or a bug: the waiters must not hang.
            _fail(grant, RefreshError("the refresh-token grant was interrupted"))
            raise
        refreshed = session.refreshed_by(result)
        grant.finished = time.time()
        grant.rotated = refreshed.token_set.refresh_token != refresh_token
        grant.result.set_result(refreshed)
        return refreshed

    async def settle(self, session: Session) -> Session | None:
        """``session`` once the revocation marks are applied: itself when nothing happened,
        refreshed when it is stale, None when it has been ended (or cannot be renewed)."""
        status = self.revocations.status(session, time.time())
        if status is Revocation.NONE:
            return session
        if status is Revocation.STALE:
            not_before = self.revocations.fresh_after(session, time.time())
            try:
                return await self.refresh(session, not_before=not_before)
            except RefreshError as exc:
                logger.info("a stale session could not be renewed, ending it: %s", exc)
        return None

    async def current_session(
        self, cookies: Mapping[str, str]
    ) -> tuple[Session | None, list[bytes]]:
        """The request's session with the marks applied, and the ``Set-Cookie`` values that
        record what changed (the refreshed session, or the ended one's deletion)."""
        loaded = await self.sessions.load(cookies)
        if loaded is None:
            return None, []
        settled = await self.settle(loaded)
        if settled is None:
            return None, await self.sessions.clear(cookies)
        if settled is loaded:
            return loaded, []
        return settled, await self.sessions.save(settled, cookies)

    async def refresh_and_continue(
        self,
        connection: HTTPConnection,
        session: Session,
        return_to: str,
        expect: Expectation | None,
        *,
        not_before: float = 0.0,
    ) -> Response:
        if session.token_set.refresh_token:
            try:
                refreshed = await self.refresh(session, not_before=not_before)
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
