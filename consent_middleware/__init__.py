"""A pure-ASGI consent gate for apps that log in with Auth0 or any OIDC provider."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ._access import UserAccessToken, get_access_token
from ._admissions import USER_SCOPE_KEY
from ._config import Settings
from ._exceptions import (
    AccessTokenError,
    AccessTokenErrorCode,
    ConfigurationError,
    ConsentMiddlewareError,
    NotGatedError,
    RefreshError,
)
from ._logging import RedactedQuery
from ._middleware import ConsentMiddleware
from ._models import Consent, User
from ._refresh import refresh_session
from ._session import CookieSessionStore, Session, SessionStore
from ._tokens import TokenSet

# The one place the version is written; pyproject.toml reads it from here.
__version__ = "0.2.0"


def current_user(request: HTTPConnection) -> User:
    """The gated user of this request; usable as a FastAPI dependency.

    Raises ``NotGatedError`` (a ``LookupError``) on a route the gate does not cover
    (public paths, or an app not behind ``ConsentMiddleware``).
    """
    user = request.scope.get(USER_SCOPE_KEY)
    if not isinstance(user, User):
        raise NotGatedError("no consented user: this path is not behind ConsentMiddleware's gate")
    return user


__all__ = [
    "AccessTokenError",
    "AccessTokenErrorCode",
    "ConfigurationError",
    "Consent",
    "ConsentMiddleware",
    "ConsentMiddlewareError",
    "CookieSessionStore",
    "NotGatedError",
    "RedactedQuery",
    "RefreshError",
    "Session",
    "SessionStore",
    "Settings",
    "TokenSet",
    "User",
    "UserAccessToken",
    "__version__",
    "current_user",
    "get_access_token",
    "refresh_session",
]
