"""The user's access token for calling APIs, renewed with the refresh token when it runs out.

What nextjs-auth0's ``getAccessToken()`` does for a Next.js app: a token valid for at least
``min_ttl`` more seconds is returned as it is (no I/O, no cryptography); otherwise, or when
asked with ``refresh=True``, the refresh-token grant renews it (one grant per session at a
time, shared with the consent flow), and the renewed session is written on the response.
A token for another API than the session's own comes from ``_audiences``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import Scope

from ._audiences import AudienceMismatch, for_connection, refresh_failure
from ._exceptions import AccessTokenError, AccessTokenErrorCode, RefreshError
from ._refresh import (
    REFRESHED_SCOPE_KEY,
    RESPONSE_STARTED_SCOPE_KEY,
    SESSION_SCOPE_KEY,
    SessionRefresher,
    check_renewable,
    gated_session,
)
from ._session import Session
from ._tokens import still_good

DEFAULT_MIN_TTL = 60
#: Tokens got this recently (seconds) come from a login just made, as far as a missing
#: refresh token goes: the login the middleware would answer with would end the same way.
JUST_SIGNED_IN = 60


@dataclass(frozen=True)
class UserAccessToken:
    token: str
    #: Unix seconds; 0 when the provider did not say.
    expires_at: int
    scope: str | None
    #: The API the token is for, when one was asked for.
    audience: str | None = None


def usable(session: Session, min_ttl: float, now: float) -> bool:
    """Whether the session's access token is good for ``min_ttl`` more seconds (or for
    half its life, when it was issued for less than twice that)."""
    tokens = session.token_set
    return still_good(tokens.access_token, tokens.expires_at, tokens.issued_at, min_ttl, now)


def renewal_not_for_age(session: object, now: float) -> bool:
    """Whether ``session`` (what a request holds under its session key, if anything) got
    its own token so lately (``JUST_SIGNED_IN``, and the first half of the token's life)
    that a renewal asked for now was not for the token's age: forced, or for another API.
    When there is no refresh token, a new login would then end the same way."""
    if not isinstance(session, Session):
        return False
    tokens = session.token_set
    got = tokens.issued_at or session.issued_at / 1000
    window = float(JUST_SIGNED_IN)
    if tokens.expires_at:
        window = min(window, (tokens.expires_at - got) / 2)
    return now - got < window


async def renewed(
    refresher: SessionRefresher,
    session: Session,
    *,
    refresh: bool,
    min_ttl: float,
    renewable: bool = True,
) -> Session:
    """``session`` itself when its access token is good enough, else refreshed (unless
    not ``renewable``: the response has started)."""
    if not refresh and usable(session, min_ttl, time.time()):
        return session
    check_renewable(session, renewable)
    try:
        return await refresher.refresh(session)
    except RefreshError as exc:
        raise refresh_failure(exc) from exc


def is_own_audience(refresher: SessionRefresher, session: Session, audience: str | None) -> bool:
    """Whether ``audience`` names the session's own token (AUTH0_AUDIENCE, or the one
    nextjs-auth0 recorded as ``tokenSet.audience``)."""
    if audience is None or audience == refresher.settings.audience:
        return True
    own = session.extra.get("tokenSet")
    return isinstance(own, dict) and own.get("audience") == audience


async def token_for(
    connection: HTTPConnection,
    refresher: SessionRefresher,
    session: Session,
    *,
    refresh: bool,
    min_ttl: float,
    audience: str | None,
    renewable: bool = True,
) -> tuple[Session, UserAccessToken]:
    """The session (itself when nothing was renewed) and the token asked for."""
    if is_own_audience(refresher, session, audience):
        current = await renewed(
            refresher, session, refresh=refresh, min_ttl=min_ttl, renewable=renewable
        )
        return current, as_user_token(current)
    assert audience is not None
    current, token = await for_connection(
        connection,
        refresher,
        session,
        audience,
        refresh=refresh,
        min_ttl=min_ttl,
        renewable=renewable,
    )
    answer = UserAccessToken(token.access_token, token.expires_at, token.scope, audience)
    return current, answer


def as_user_token(session: Session) -> UserAccessToken:
    token_set = session.token_set
    return UserAccessToken(token_set.access_token, token_set.expires_at, token_set.scope)


async def get_access_token(
    connection: HTTPConnection,
    *,
    refresh: bool = False,
    min_ttl: float = DEFAULT_MIN_TTL,
    audience: str | None = None,
) -> UserAccessToken:
    """The current user's access token, renewed when it expires within ``min_ttl`` seconds
    (or always, with ``refresh=True``). With ``audience``, a token for that API, got with
    the refresh token (Auth0's Multi-Resource Refresh Token, or RFC 8707's ``resource``)
    and kept in the session's ``accessTokens``. Call it from a route behind the gate; a
    renewed session is written on the response. Raises ``AccessTokenError`` (its ``code``
    is one of ``AccessTokenErrorCode``); one raised before the response starts is answered
    by the middleware: 401 ``login_required`` for API calls, the login for pages, 503 when
    the provider is unreachable, 502 for a token issued for another audience. Once the
    response has started (a streaming body, a background task) a token that is still good
    is returned, but one that needs renewing raises (``RESPONSE_STARTED``): the renewed
    session could not reach the browser."""
    scope = connection.scope
    gated = await gated_session(scope)
    if gated is None:
        raise AccessTokenError(
            AccessTokenErrorCode.MISSING_SESSION.value,
            "get_access_token() needs a request that passed ConsentMiddleware",
        )
    refresher, session = gated
    try:
        current, token = await token_for(
            connection,
            refresher,
            session,
            refresh=refresh,
            min_ttl=min_ttl,
            audience=audience,
            renewable=RESPONSE_STARTED_SCOPE_KEY not in scope,
        )
    except AudienceMismatch as exc:
        # The grant rotated the refresh token all the same: the cookie must carry it.
        _remember(scope, session, exc.session)
        raise
    _remember(scope, session, current)
    return token


def _remember(scope: Scope, before: Session, current: Session) -> None:
    if current is not before:
        scope[SESSION_SCOPE_KEY] = current
        scope[REFRESHED_SCOPE_KEY] = current
