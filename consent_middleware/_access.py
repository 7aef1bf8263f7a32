"""The user's access token for calling APIs, renewed with the refresh token when it runs out.

What nextjs-auth0's ``getAccessToken()`` does for a Next.js app: a token valid for at least
``min_ttl`` more seconds is returned as it is (no I/O, no cryptography); otherwise, or when
asked with ``refresh=True``, the refresh-token grant renews it (one grant per session at a
time, shared with the consent flow), and the renewed session is written on the response.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from ._exceptions import AccessTokenError, IdTokenError, RefreshError, TokenEndpointError
from ._refresh import REFRESHED_SCOPE_KEY, REFRESHER_SCOPE_KEY, SESSION_SCOPE_KEY, SessionRefresher
from ._session import Session

DEFAULT_MIN_TTL = 60


class AccessTokenErrorCode(enum.Enum):
    #: No session: the user must sign in.
    MISSING_SESSION = "missing_session"
    #: The session holds no refresh token (``offline_access`` was not granted).
    MISSING_REFRESH_TOKEN = "missing_refresh_token"  # noqa: S105 - an error code
    #: The provider refused the refresh token (revoked, expired, reused): sign in again.
    FAILED_TO_REFRESH_TOKEN = "failed_to_refresh_token"  # noqa: S105 - an error code
    #: The provider could not be reached: try again later; the old token is untouched.
    PROVIDER_UNAVAILABLE = "provider_unavailable"


@dataclass(frozen=True)
class UserAccessToken:
    token: str
    #: Unix seconds; 0 when the provider did not say.
    expires_at: int
    scope: str | None


def usable(session: Session, min_ttl: float, now: float) -> bool:
    """Whether the session's access token is good for ``min_ttl`` more seconds."""
    token_set = session.token_set
    if not token_set.access_token:
        return False
    return token_set.expires_at == 0 or token_set.expires_at - now > min_ttl


async def renewed(
    refresher: SessionRefresher, session: Session, *, refresh: bool, min_ttl: float
) -> Session:
    """``session`` itself when its access token is good enough, else refreshed."""
    if not refresh and usable(session, min_ttl, time.time()):
        return session
    if not session.token_set.refresh_token:
        raise AccessTokenError(
            AccessTokenErrorCode.MISSING_REFRESH_TOKEN.value,
            "the session holds no refresh token (was offline_access granted?)",
        )
    try:
        return await refresher.refresh(session)
    except RefreshError as exc:
        # The provider said no (or answered with a token that fails verification): sign in
        # again. Anything else is an outage, and the session is left as it was.
        refused = isinstance(exc.__cause__, TokenEndpointError | IdTokenError)
        code = (
            AccessTokenErrorCode.FAILED_TO_REFRESH_TOKEN
            if refused
            else AccessTokenErrorCode.PROVIDER_UNAVAILABLE
        )
        raise AccessTokenError(code.value, str(exc)) from exc


def as_user_token(session: Session) -> UserAccessToken:
    token_set = session.token_set
    return UserAccessToken(token_set.access_token, token_set.expires_at, token_set.scope)


async def get_access_token(
    connection: HTTPConnection, *, refresh: bool = False, min_ttl: float = DEFAULT_MIN_TTL
) -> UserAccessToken:
    """The current user's access token, renewed when it expires within ``min_ttl`` seconds
    (or always, with ``refresh=True``). Call it from a route behind the gate; a renewed
    session is written on the response. Raises ``AccessTokenError`` (its ``code`` is one of
    ``AccessTokenErrorCode``); one raised before the response starts is answered by the
    middleware: 401 ``login_required`` for API calls, the login for pages, 503 when the
    provider is unreachable."""
    scope = connection.scope
    refresher = scope.get(REFRESHER_SCOPE_KEY)
    session = scope.get(REFRESHED_SCOPE_KEY) or scope.get(SESSION_SCOPE_KEY)
    if not isinstance(refresher, SessionRefresher) or not isinstance(session, Session):
        raise AccessTokenError(
            AccessTokenErrorCode.MISSING_SESSION.value,
            "get_access_token() needs a request that passed ConsentMiddleware",
        )
    current = await renewed(refresher, session, refresh=refresh, min_ttl=min_ttl)
    if current is not session:
        scope[SESSION_SCOPE_KEY] = current
        scope[REFRESHED_SCOPE_KEY] = current
    return as_user_token(current)
