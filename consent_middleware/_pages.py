"""Every page the package renders, and the one mapping from its errors to answers.

Templates are Jinja2, autoescaped; an app can override any of them by name with
``Settings.templates_directory``.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.responses import HTMLResponse, JSONResponse, Response

from ._config import Settings
from ._exceptions import (
    AccessTokenErrorCode,
    ConsentMiddlewareError,
    IdentityProviderError,
    IdTokenError,
    LedgerError,
    ManagementAPIError,
    SharedStateError,
    TokenEndpointError,
)
from ._redirects import safe_return_to
from ._transactions import Expectation

logger = logging.getLogger("consent_middleware")

# Pages carry tokens for forms and per-user data: never cache them, never frame them.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # The package's templates style inline; an app's own may link its stylesheet.
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "same-origin",
}
NO_STORE = {"Cache-Control": "no-store"}
# The package's own routes answer these for an address or a method they do not serve.
_STATUSES = {
    404: ("Not found", "not_found", "There is no such page here."),
    405: (
        "Method not allowed",
        "method_not_allowed",
        "This address does not take that kind of request.",
    ),
}
# Tokens the provider would not issue for the API asked for, and the status each gets.
_REFUSED_TOKENS = {
    AccessTokenErrorCode.AUDIENCE_MISMATCH.value: 502,
    AccessTokenErrorCode.AUDIENCE_REFUSED.value: 403,
}


class Pages:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("consent_middleware", "templates")]
        if settings.templates_directory:
            loaders.insert(0, jinja2.FileSystemLoader(settings.templates_directory))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self._mounted_at = urlsplit(settings.app_base_url).path.rstrip("/")
        # The terms as the pages link them: a path is one of the app's, below its mount.
        terms = settings.terms_url
        self.terms_link = self.path(terms) if terms.startswith("/") else terms

    @property
    def home_url(self) -> str:
        return f"{self.settings.app_base_url}/"

    def url(self, path: str) -> str:
        """An absolute URL of the app for one of its paths."""
        return f"{self.settings.app_base_url}{path}"

    def path(self, path: str) -> str:
        """A link to one of the app's paths for its pages and forms: below where the app is
        mounted (``APP_BASE_URL``'s path, as the login's callback is), and relative to the
        site, so it holds whatever spelling of the host the browser used."""
        return self._mounted_at + path

    @property
    def login_url(self) -> str:
        return self.url(f"{self.settings.routes_prefix}/login")

    def login_to(self, return_to: str | None) -> str:
        """The login that comes back to ``return_to`` after signing in, when it is an
        address of this app that the login will follow (the same check as its
        ``returnTo``); the plain login otherwise."""
        back = safe_return_to(return_to, self.settings.app_base_url)
        return f"{self.login_url}?{urlencode({'returnTo': back})}" if back else self.login_url

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        # Where the consent forms post, and the terms, under the app's mount.
        context.setdefault("consent_url", self.path(self.settings.consent_path))
        context.setdefault("terms_url", self.terms_link)
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def error(
        self,
        title: str,
        message: str,
        status_code: int,
        *,
        action_url: str | None = None,
        action_label: str | None = None,
    ) -> HTMLResponse:
        return self.render(
            "error.html",
            status_code,
            title=title,
            message=message,
            home_url=self.home_url,
            action_url=action_url,
            action_label=action_label,
        )

    def sign_in_again(
        self, title: str, message: str, status_code: int, label: str, login_url: str = ""
    ) -> Response:
        """An error page whose way out is a fresh sign-in (at ``login_url``, which may say
        where to return; the plain login otherwise)."""
        return self.error(
            title, message, status_code, action_url=login_url or self.login_url, action_label=label
        )

    def for_error(
        self, exc: ConsentMiddlewareError, as_json: bool = False, return_to: str | None = None
    ) -> Response:
        """The one place an error becomes what the user sees (``as_json``: what an API
        client or the browser's own code reads, ``{"error": code}``). Messages explain
        without leaking: the reason of a rejected ID token, an OAuth error code, never a
        token. A page whose way out is signing in comes back to ``return_to`` when known."""
        if isinstance(exc, SharedStateError):
            logger.warning("shared store unavailable: %s", exc)
            return self.unavailable(as_json)
        told = _explained(exc)
        if as_json:
            fields = {"login_url": self.login_url} if told.sign_in and told.login_ends_it else {}
            return self.json_error(told.code, told.status, **fields)
        if told.sign_in:
            return self.sign_in_again(
                told.title, told.message, told.status, told.sign_in, self.login_to(return_to)
            )
        return self.error(told.title, told.message, told.status)

    def unavailable(
        self,
        as_json: bool = False,
        message: str = "The site cannot check your session just now.",
    ) -> Response:
        """The shared store (sessions, locks) is away, or what ``message`` says: try
        again, nothing was lost."""
        if as_json:
            response: Response = self.json_error("temporarily_unavailable", 503)
        else:
            message += " Please try again in a moment."
            response = self.error("Temporarily unavailable", message, 503)
        response.headers["Retry-After"] = "5"
        return response

    def access_token_error(
        self, code: str, as_json: bool, login_helps: bool = True
    ) -> Response | None:
        """An ``AccessTokenError`` that a new login would not cure, as its answer; None for
        the others (the caller sends the login). A token that needs renewing right after a
        login that gave no refresh token (``offline_access`` not granted) is one: the next
        login would end the same way, and loop. (A refused refresh token is not: it may
        have been revoked since, and a login brings a new one.)"""
        if code == AccessTokenErrorCode.PROVIDER_UNAVAILABLE.value:
            return self.unavailable(as_json)
        if not login_helps and code == AccessTokenErrorCode.MISSING_REFRESH_TOKEN.value:
            if as_json:
                return self.json_error(code, 502)
            return self.error(
                "Access could not be renewed",
                "You have just signed in, but the identity provider gave the site no way to "
                "renew access for this page (no refresh token). Signing in again would not "
                "help: the site's configuration needs attention.",
                502,
            )
        if code in _REFUSED_TOKENS:
            # The provider answered: with a token for another API (Auth0 without a
            # Multi-Resource Refresh Token policy for it), a gateway error; or with a
            # refusal of that API. Either is a setup problem, never cured by a login.
            status = _REFUSED_TOKENS[code]
            if as_json:
                return self.json_error(code, status)
            return self.error(
                "Token not available",
                "The identity provider would not issue a token for the service this page "
                "needs. The site's configuration needs attention.",
                status,
            )
        if code == AccessTokenErrorCode.INVALID_AUDIENCE.value:
            if as_json:
                return self.json_error(code, 400)
            return self.error("Bad request", "The service asked for is not a valid one.", 400)
        return None

    def not_shown_by_provider(self, expect: Expectation) -> Response:
        """The loop guard's page: the consent was saved but the new ID token ignores it."""
        what = "the accepted terms" if expect is Expectation.CONSENT else "the withdrawal"
        return self.error(
            "Consent saved, but the sign-in does not show it",
            f"Your choice was saved, but the identity provider's new ID token does not carry "
            f"{what} in the {self.settings.consent_claim} claim. The post-login Action that "
            "copies app_metadata.consent into the ID token is probably missing or not "
            "deployed. Please tell the site's administrator.",
            502,
        )

    def status(self, status_code: int, as_json: bool = False) -> Response:
        """Unknown paths and methods under the package's own routes: a plain 404/405, in
        JSON for API clients."""
        title, error, message = _STATUSES[status_code]
        if as_json:
            return self.json_error(error, status_code)
        return self.error(title, message, status_code)

    def json_error(self, error: str, status_code: int, **fields: str | list[str]) -> JSONResponse:
        return JSONResponse({"error": error, **fields}, status_code=status_code, headers=NO_STORE)


class _Explanation(NamedTuple):
    code: str
    status: int
    title: str
    message: str
    #: The label of the way out when it is a fresh sign-in.
    sign_in: str = ""
    #: Whether signing in is what ends the error, so an API client is told where (not so
    #: for a provider away: the client tries its request again).
    login_ends_it: bool = True


def _explained(exc: ConsentMiddlewareError) -> _Explanation:
    """What an error means to the user (logged here, once)."""
    if isinstance(exc, IdTokenError):
        logger.warning("ID token rejected: %s", exc.reason)
        message = f"The identity provider's answer was rejected: {exc.reason}."
        return _Explanation("id_token_rejected", 400, "Sign-in rejected", message)
    if isinstance(exc, TokenEndpointError):
        logger.warning("token endpoint refused the grant: %s", exc.error)
        message = f"The identity provider refused to complete the sign-in ({exc.error})."
        return _Explanation("sign_in_failed", 400, "Sign-in failed", message, "Try again")
    if isinstance(exc, IdentityProviderError):
        # Which address failed, and how, is for the operators (the log), not the user.
        logger.warning("identity provider unavailable: %s", exc)
        message = (
            "The sign-in service could not be reached just now, or did not answer as "
            "expected. Please try again in a moment."
        )
        title = "Sign-in service unavailable"
        return _Explanation(
            "provider_unavailable", 502, title, message, "Try again", login_ends_it=False
        )
    if isinstance(exc, ManagementAPIError | LedgerError):
        logger.warning("saving a choice failed: %s", exc)
        message = "Your choice could not be saved just now. Please try again in a moment."
        return _Explanation("temporarily_unavailable", 503, "Service unavailable", message)
    # RefreshError, and anything else that means the session cannot go on as it is.
    logger.info("session could not be renewed: %s", exc)
    message = "Your session could not be brought up to date. Please sign in again."
    return _Explanation("login_required", 401, "Session could not be renewed", message, "Sign in")
