"""Bring a session's claims up to date without a logout.

Order: the refresh-token grant (no browser trip), then ``prompt=none`` through the
callback, then an interactive login when the provider needs the user. A flow that
expects a change (consent given, consent withdrawn) checks for it once and stops with
an explanation when it is not there, so no path can loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cachetools import TTLCache
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response
from starlette.types import Scope

from ._config import Settings
from ._exceptions import (
    AccessTokenError,
    AccessTokenErrorCode,
    IdentityProviderError,
    RefreshError,
)
from ._grants import Grants
from ._login import Login
from ._models import Consent
from ._oidc import OIDCClient
from ._pages import Pages
from ._revocation import Revocation, Revocations
from ._session import Session, SessionStore
from ._state import SharedState
from ._transactions import Expectation, Purpose

logger = logging.getLogger("consent_middleware")

REFRESHER_SCOPE_KEY = "consent_middleware.refresher"
SESSION_SCOPE_KEY = "consent_middleware.session"
# A session refreshed during the request; the middleware writes its cookie on the way out.
REFRESHED_SCOPE_KEY = "consent_middleware.refreshed"
# Set once the response has started: a session refreshed after that cannot reach the
# browser, so nothing may spend the refresh token any more.
RESPONSE_STARTED_SCOPE_KEY = "consent_middleware.response_started"
# An async callable (scope -> Session | None) the gate leaves when it admitted a request
# on a summary: it parses the full session from the request's cookies, once.
SESSION_LOADER_SCOPE_KEY = "consent_middleware.session_loader"


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


#: How long (seconds) a session remembers that the provider would not give it a token for
#: an API: a browser polling /auth/access-token?audience=... spends no grant on each poll.
REFUSAL_MEMORY = 60


@dataclass
class SessionRefresher:
    settings: Settings
    oidc: OIDCClient
    sessions: SessionStore
    login: Login
    revocations: Revocations
    state: SharedState
    pages: Pages
    grants: Grants = field(init=False)
    # (sid, API) -> what the provider answered when it would not give a token for that API
    # (``_audiences``): asked again within the minute, the same answer without a grant.
    refused_audiences: TTLCache[tuple[str, str], str] = field(init=False)

    def __post_init__(self) -> None:
        self.grants = Grants(self.state, self.settings.secret)
        self.refused_audiences = TTLCache(10_000, REFUSAL_MEMORY)

    async def refresh(self, session: Session, *, not_before: float = 0.0) -> Session:
        """The refresh-token grant only; raises RefreshError when it cannot be done.

        ``not_before`` (Unix seconds): a grant started earlier is not good enough, because
        the caller changed the user's record after that and needs claims that show it.
        """
        return await self.grants.refresh(session, not_before, self._grant)

    async def _grant(self, session: Session, refresh_token: str) -> Session:
        try:
            result = await self.oidc.refresh_token_grant(refresh_token, sub=session.sub)
        except IdentityProviderError as exc:
            raise RefreshError(f"the refresh-token grant failed: {exc}") from exc
        return session.refreshed_by(result)

    async def with_consent_claim(self, session: Session) -> Session:
        """``session``, with the consent claim read from its own ID token when the user
        claims lack it: nextjs-auth0 v4 keeps only its default claims in ``session.user``
        unless the app configures ``beforeSessionSaved``. The token's signature is verified
        (against the provider's keys), its ``exp`` is not: the session's lifetime governs."""
        claim = self.settings.consent_claim
        id_token = session.token_set.id_token
        if claim in session.user or not id_token:
            return session
        try:
            claims = await self.oidc.stored_id_token_claims(id_token)
        except IdentityProviderError as exc:
            logger.info("the session's ID token could not be read again: %s", exc)
            return session
        if claims.get("sub") != session.user.get("sub") or claim not in claims:
            return session
        return replace(session, user={**session.user, claim: claims[claim]})

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
        return await self.login.redirect(
            return_to, cookies=connection.cookies, purpose=Purpose.SILENT, expect=expect
        )

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
    Call it from a route behind the gate, before answering: the new cookie is set on the
    response. Raises ``RefreshError`` when the session has no usable refresh token, or
    once the response has started (a rotated refresh token could not reach the browser).
    """
    gated = await gated_session(connection.scope)
    if gated is None:
        raise RefreshError("refresh_session() needs a request that passed ConsentMiddleware")
    if RESPONSE_STARTED_SCOPE_KEY in connection.scope:
        raise RefreshError("the response has started: a refreshed session could not be written")
    refresher, session = gated
    refreshed = await refresher.refresh(session)
    connection.scope[SESSION_SCOPE_KEY] = refreshed
    connection.scope[REFRESHED_SCOPE_KEY] = refreshed
    return refreshed


async def gated_session(scope: Scope) -> tuple[SessionRefresher, Session] | None:
    """The session of a request the gate let through, and its refresher; None for any
    other request."""
    refresher = scope.get(REFRESHER_SCOPE_KEY)
    if not isinstance(refresher, SessionRefresher):
        return None
    session = await admitted_session(scope)
    return (refresher, session) if session is not None else None


async def admitted_session(scope: Scope) -> Session | None:
    """The session the gate let this request (or handshake) through on; None for any other.
    The gate may have read only a summary of the cookie (it needs no tokens) and left a
    loader: the full session is then parsed, once per request, from the same cookies."""
    session = scope.get(REFRESHED_SCOPE_KEY) or scope.get(SESSION_SCOPE_KEY)
    if session is None:
        loader = scope.get(SESSION_LOADER_SCOPE_KEY)
        session = await loader(scope) if loader is not None else None
        if session is None:
            return None  # ended meanwhile, or not the session the request was admitted on
        scope[SESSION_SCOPE_KEY] = session
    return session if isinstance(session, Session) else None


def check_renewable(session: Session, renewable: bool) -> None:
    """AccessTokenError unless a grant may be made for ``session`` now."""
    if not session.token_set.refresh_token:
        raise AccessTokenError(
            AccessTokenErrorCode.MISSING_REFRESH_TOKEN.value,
            "the session holds no refresh token (was offline_access granted?)",
        )
    if not renewable:
        raise AccessTokenError(
            AccessTokenErrorCode.RESPONSE_STARTED.value,
            "the access token needs renewing and the response has started: the renewed "
            "session could not be written (call get_access_token() before answering)",
        )
