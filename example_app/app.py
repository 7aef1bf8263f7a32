"""The reference integration: a Starlette app behind ConsentMiddleware.

``uvicorn example_app.app:app`` reads the same environment variables as the package.
Without ``AUTH0_DOMAIN`` it mounts the embedded development tenant at ``/dev-tenant``
and points itself at it, so the whole flow runs with no Auth0 account.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from consent_middleware import (
    ConfigurationError,
    ConsentMiddleware,
    RedactedQuery,
    Settings,
    current_user,
)
from example_app import api

if TYPE_CHECKING:
    from dev_tenant import DevTenant

logger = logging.getLogger("example_app")
# uvicorn's access lines would show the callback's authorization code and state.
logging.getLogger("uvicorn.access").addFilter(RedactedQuery())
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

DEV_TENANT_PATH = "/dev-tenant"
DEV_CLIENT_ID = "example-app"
DEFAULTS = {
    "CONSENT_CLAIM": "https://consent.example.com/consent",
    "CONSENT_TERMS_VERSION": "2026-11",
    # Two optional purposes beside the terms; the newsletter page needs one of them.
    "CONSENT_PURPOSES": json.dumps(
        [
            {
                "id": "marketing",
                "title": "Newsletter",
                "text": "Send me the monthly newsletter by email.",
                "version": "1",
            },
            {
                "id": "analytics",
                "title": "Usage statistics",
                "text": "Count my visits, without sharing them, to improve the site.",
                "version": "1",
            },
        ]
    ),
    "CONSENT_REQUIRE": "/newsletter*=marketing",
}


async def home(request: Request) -> Response:
    return templates.TemplateResponse(
        request, "home.html", {"settings": request.app.state.settings}
    )


async def terms(request: Request) -> Response:
    return templates.TemplateResponse(
        request, "terms.html", {"settings": request.app.state.settings}
    )


# A page or answer about the signed-in user: for this browser only (the gate adds Vary:
# Cookie; a shared cache must still not keep it), and never framed by another site.
PRIVATE = {**api.PRIVATE, "X-Frame-Options": "DENY"}


async def dashboard(request: Request) -> Response:
    user = current_user(request)
    context = {"user": user, "settings": request.app.state.settings}
    return templates.TemplateResponse(request, "dashboard.html", context, headers=PRIVATE)


async def newsletter(request: Request) -> Response:
    # Behind CONSENT_REQUIRE=/newsletter*=marketing: only users who allowed it get here.
    context = {"user": current_user(request)}
    return templates.TemplateResponse(request, "newsletter.html", context, headers=PRIVATE)


async def api_me(request: Request) -> Response:
    user = current_user(request)
    consent = user.consent
    return JSONResponse(
        {"sub": user.sub, "email": user.email, "consent_version": consent and consent.version},
        headers=PRIVATE,
    )


def build_app(settings: Settings, extra_routes: list[Mount] | None = None) -> Starlette:
    """The example app; ``extra_routes`` (the dev tenant) are served beside it, ungated,
    and so is the protected API, which checks its bearer token itself."""
    extra = list(extra_routes or [])
    # Added to the public paths configured (CONSENT_PUBLIC_PATHS), never put in their place.
    public = ("/", "/terms", api.RESOURCE_PATH, *(f"{mount.path}/*" for mount in extra))
    missing = tuple(path for path in public if path not in settings.public_paths)
    if missing:
        settings = replace(settings, public_paths=(*settings.public_paths, *missing))
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/terms", terms),
            Route("/dashboard", dashboard),
            Route("/newsletter", newsletter),
            Route("/api/me", api_me),
            *api.routes(),
            *extra,
        ],
        # Outermost, so it also sees the lifespan and closes its HTTP client at shutdown.
        middleware=[Middleware(ConsentMiddleware, settings=settings)],
    )
    app.state.settings = settings
    return app


def create_app(environ: Mapping[str, str] | None = None) -> Starlette:
    env = dict(os.environ if environ is None else environ)
    # build_app adds its own public pages, and the API that checks its bearer token itself.
    if env.get("AUTH0_DOMAIN"):
        for name, value in DEFAULTS.items():
            env.setdefault(name, value)
        base = env.get("APP_BASE_URL", "")
        env.setdefault("CONSENT_TERMS_URL", f"{base.rstrip('/')}/terms")
        return build_app(Settings.from_env(env))
    return create_dev_app(env)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_tenant(base: str, client_secret: str, consent_claim: str, **options: Any) -> DevTenant:
    """The embedded tenant for an app served at ``base``, with the example app registered."""
    from dev_tenant import DevClient, DevTenant

    client = DevClient(
        client_id=DEV_CLIENT_ID,
        client_secret=client_secret,
        redirect_uris=[f"{base}/auth/callback"],
        logout_urls=[f"{base}/"],
        # The tenant tells the app when a login ends elsewhere (OIDC Back-Channel Logout).
        backchannel_logout_uri=f"{base}/auth/backchannel-logout",
    )
    options.setdefault("apis", (api.ORDERS_API,))
    return DevTenant(base + DEV_TENANT_PATH, [client], consent_claim, **options)


def create_dev_app(env: dict[str, str]) -> Starlette:
    base = env.get("APP_BASE_URL", "http://localhost:8000").rstrip("/")
    if not is_loopback(urlsplit(base).hostname or ""):
        # Anyone may sign up at the dev tenant: a deployment that lost AUTH0_DOMAIN must not
        # quietly serve it.
        raise ConfigurationError(
            f"AUTH0_DOMAIN is not set, and the embedded development tenant serves only a "
            f"loopback APP_BASE_URL (localhost, 127.0.0.1, ::1), not {base!r}"
        )
    for name, value in DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("CONSENT_TERMS_URL", f"{base}/terms")
    # The ledger the example owns: a SQLite file beside it, unless told otherwise. Its key
    # pseudonymises users; a random one per start is fine for a tenant that forgets its
    # users on restart anyway (in production, set CONSENT_LEDGER_KEY once and keep it).
    env.setdefault("CONSENT_LEDGER_URL", "sqlite:///consent-ledger.db")
    if not env.get("CONSENT_LEDGER_KEY"):
        env["CONSENT_LEDGER_KEY"] = secrets.token_hex(32)
    if not env.get("AUTH0_SECRET"):
        # Fine for a dev tenant that forgets everything on restart anyway.
        env["AUTH0_SECRET"] = secrets.token_hex(32)
    client_secret = secrets.token_urlsafe(32)
    # DEV_ACCESS_TOKEN_LIFETIME=5 makes the dashboard widget's token renew every few seconds.
    lifetime = int(env.get("DEV_ACCESS_TOKEN_LIFETIME") or 3600)
    tenant = dev_tenant(base, client_secret, env["CONSENT_CLAIM"], access_token_lifetime=lifetime)
    env.setdefault("AUTH0_AUDIENCE", api.ORDERS_API)
    env.update(
        AUTH0_DOMAIN=base + DEV_TENANT_PATH,
        AUTH0_CLIENT_ID=DEV_CLIENT_ID,
        AUTH0_CLIENT_SECRET=client_secret,
        APP_BASE_URL=base,
    )
    logger.warning(
        "No AUTH0_DOMAIN set: using the embedded DEVELOPMENT tenant at %s%s. Not for production.",
        base,
        DEV_TENANT_PATH,
    )
    settings = Settings.from_env(env)
    app = build_app(settings, [Mount(DEV_TENANT_PATH, tenant)])
    app.state.dev_tenant = tenant
    return app


app = create_app()
