"""The package's single exception hierarchy.

ConsentMiddlewareError
├── ConfigurationError      missing or invalid settings, raised at start-up
├── NotGatedError           asked for the gated user where the gate did not run
├── IdentityProviderError   the IdP could not be reached or answered badly
│   ├── TokenEndpointError  the token endpoint refused a grant (OAuth error code kept)
│   └── IdTokenError        an ID token failed verification (reason kept)
├── ManagementAPIError      the Management API failed after bounded retries
├── RefreshError            a session could not be refreshed silently
├── AccessTokenError        no usable access token (``code`` says why)
├── SharedStateError        the shared store (Redis) is unreachable or too slow
└── LedgerError             the consent ledger is unreachable, or refused an append

Library errors (httpx, python-jose) are translated where they are caught, always with
``raise ... from exc`` so the original stays on ``__cause__`` for logs and debuggers.
Only the errors an app can meet are exported from the package: ``ConfigurationError``
(start-up), ``NotGatedError`` (``current_user``), ``RefreshError`` (``refresh_session``),
``AccessTokenError`` (``get_access_token``) and their base. The others are turned into
pages or JSON by ``_pages.Pages.for_error``.
"""

from __future__ import annotations

import enum


class ConsentMiddlewareError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(ConsentMiddlewareError):
    """A setting is missing or invalid; the message names the variable."""


class NotGatedError(ConsentMiddlewareError, LookupError):
    """No consented user on this request: the path is public or not behind the gate.

    Also a ``LookupError``, which is what this used to raise, so existing handlers keep
    working.
    """


class IdentityProviderError(ConsentMiddlewareError):
    """Discovery, JWKS or the token endpoint failed or answered something unusable."""


class TokenEndpointError(IdentityProviderError):
    """The token endpoint answered an OAuth error such as ``invalid_grant``."""

    def __init__(self, error: str, description: str = "", status_code: int = 400) -> None:
        self.error = error
        self.description = description
        self.status_code = status_code
        super().__init__(f"{error}: {description}" if description else error)


class IdTokenError(IdentityProviderError):
    """An ID token was rejected; ``reason`` is safe to show to the user."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ManagementAPIError(ConsentMiddlewareError):
    """A Management API call failed after its retries. ``outcome_unknown``: a write that
    may have been applied all the same (no answer, and reading it back failed too)."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        *,
        outcome_unknown: bool = False,
        error_code: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.outcome_unknown = outcome_unknown
        #: Auth0's ``errorCode`` (``inexistent_user``: the user is gone), when it gave one.
        self.error_code = error_code
        super().__init__(message)


class RefreshError(ConsentMiddlewareError):
    """The session could not be refreshed without the browser."""


class AccessTokenErrorCode(enum.StrEnum):
    #: No session: the user must sign in.
    MISSING_SESSION = "missing_session"
    #: The session holds no refresh token (``offline_access`` was not granted).
    MISSING_REFRESH_TOKEN = "missing_refresh_token"  # noqa: S105 - an error code
    #: The provider refused the refresh token (revoked, expired, reused): sign in again.
    FAILED_TO_REFRESH_TOKEN = "failed_to_refresh_token"  # noqa: S105 - an error code
    #: The provider could not be reached: try again later; the old token is untouched.
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    #: The provider answered with a token for another API than the one asked for (Auth0
    #: without a Multi-Resource Refresh Token policy for it quietly does): a setup problem.
    AUDIENCE_MISMATCH = "audience_mismatch"
    #: The provider refused a token for the API asked for (Auth0's ``access_denied``
    #: "Service not found", RFC 8707's ``invalid_target``, a scope not granted): a setup
    #: problem, which a new login would not cure.
    AUDIENCE_REFUSED = "audience_refused"
    #: The token needed renewing once the response had started (a streaming body, a
    #: background task): the renewed session could not reach the browser, and a rotated
    #: refresh token would be lost with it. Ask for the token before answering.
    RESPONSE_STARTED = "response_started"
    #: The audience asked for is not an identifier that may be sent (empty, too long, or
    #: for RFC 8707's ``resource`` not an absolute URI without a fragment).
    INVALID_AUDIENCE = "invalid_audience"


class AccessTokenError(ConsentMiddlewareError):
    """No usable access token; ``code`` is an ``AccessTokenErrorCode`` value, as
    nextjs-auth0 names them (``missing_refresh_token``, ``failed_to_refresh_token``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class SharedStateError(ConsentMiddlewareError):
    """The store the workers share (Redis) did not answer in time; requests that need it
    get a 503 until it is back, and nothing the provider already accepted is undone."""


class LedgerError(ConsentMiddlewareError):
    """The consent ledger could not be written or read (the database is down), refused an
    append (an unknown or already decided entry), or holds a schema newer than this code.
    A consent is accepted only once the ledger holds it, so the accept fails with a page."""
