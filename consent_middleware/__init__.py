"""A pure-ASGI consent gate for apps that log in with Auth0 or any OIDC provider."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ._config import Settings
from ._exceptions import (
    ConfigurationError,
    ConsentMiddlewareError,
    IdentityProviderError,
    IdTokenError,
    ManagementAPIError,
    RefreshError,
    TokenEndpointError,
)
from ._middleware import USER_SCOPE_KEY, ConsentMiddleware
from ._models import Consent, User
from ._refresh import refresh_session
from ._session import CookieSessionStore, Session, SessionStore, TokenSet

__version__ = "0.1.0"


def current_user(request: HTTPConnection) -> User:
    """The gated user of this request; usable as a FastAPI dependency.

    Raises ``LookupError`` on a route the gate does not cover (public paths).
    """
    user = request.scope.get(USER_SCOPE_KEY)
    if not isinstance(user, User):
        raise LookupError("no consented user: this path is not behind ConsentMiddleware's gate")
    return user


__all__ = [
    "ConfigurationError",
    "Consent",
    "ConsentMiddleware",
    "ConsentMiddlewareError",
    "CookieSessionStore",
    "IdTokenError",
    "IdentityProviderError",
    "ManagementAPIError",
    "RefreshError",
    "Session",
    "SessionStore",
    "Settings",
    "TokenEndpointError",
    "TokenSet",
    "User",
    "current_user",
    "refresh_session",
]
