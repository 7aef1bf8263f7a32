"""The gate's decision for one request, and the answers it gives when it says no."""

from __future__ import annotations

import enum
from urllib.parse import urlencode

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response

from ._config import Settings
from ._models import Consent
from ._redirects import bounded_return_to
from ._session import Session


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"
    CONSENT = "consent"


def decide(session: Session | None, settings: Settings) -> Verdict:
    if session is None:
        return Verdict.LOGIN
    consent = Consent.from_claim(session.user.get(settings.consent_claim))
    if consent is None or not consent.covers(settings.terms_version):
        return Verdict.CONSENT
    return Verdict.ALLOW


def is_own_route(path: str, settings: Settings) -> bool:
    """The auth and consent routes, which the middleware serves itself."""
    prefixes = (settings.routes_prefix, settings.consent_path)
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def is_public(path: str, settings: Settings) -> bool:
    """Configured public paths: exact ("/about"), or a prefix when they end in "*"."""
    for public in settings.public_paths:
        if public.endswith("*"):
            if path.startswith(public[:-1]):
                return True
        elif path == public:
            return True
    return False


def wants_json(path: str, headers: Headers, settings: Settings) -> bool:
    """True for fetch/XHR and API clients, which must never get an HTML redirect."""
    if any(path == p or path.startswith(p.rstrip("/") + "/") for p in settings.api_prefixes):
        return True
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return True
    accept = headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return True
    # Browsers mark their own navigations; anything else they send (fetch) is an API call.
    mode = headers.get("sec-fetch-mode")
    return mode is not None and mode != "navigate" and headers.get("sec-fetch-dest") == "empty"


def refusal(
    verdict: Verdict, method: str, return_to: str, as_json: bool, settings: Settings
) -> Response:
    # A long query (a search, say) is dropped rather than refused at /auth/login: the user
    # still lands on the page they asked for, and the login's cookie stays small.
    return_to = bounded_return_to(return_to)
    if verdict is Verdict.LOGIN:
        url = f"{settings.routes_prefix}/login?{urlencode({'returnTo': return_to})}"
        if as_json:
            return _json("login_required", "login_url", url, 401, settings)
        # 307 keeps the method, which only makes sense for GET/HEAD.
        return RedirectResponse(url, status_code=307 if method in ("GET", "HEAD") else 303)
    url = f"{settings.consent_path}?{urlencode({'returnTo': return_to})}"
    if as_json:
        return _json("consent_required", "consent_url", url, 403, settings)
    return RedirectResponse(url, status_code=303)


def _json(error: str, key: str, url: str, status: int, settings: Settings) -> Response:
    return JSONResponse(
        {"error": error, key: settings.app_base_url + url},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
