"""A small protected API and the dashboard widget that calls it with the user's token.

``/resource/orders`` stands for an API of your own (served here so the example is one
process): it trusts nothing but the bearer token, whose RS256 signature, issuer, audience
and expiry it checks against the tenant's JWKS with python-jose. ``/api/widget`` is the
app's side: behind the gate, it takes the user's token with ``get_access_token()`` (renewed
with the refresh token when it runs out) and calls the API with it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from jose import JWTError, jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consent_middleware import Settings, get_access_token

#: The API's identifier (Auth0: the API's "Identifier"; the app's AUTH0_AUDIENCE).
ORDERS_API = "https://orders.example.com"
RESOURCE_PATH = "/resource/orders"
JWKS_TTL = 600
_jwks: dict[str, tuple[dict[str, Any], float]] = {}


async def tenant_jwks(settings: Settings) -> dict[str, Any]:
    """The tenant's published keys, cached a while (a real API caches them too)."""
    cached = _jwks.get(settings.domain)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    async with httpx.AsyncClient(timeout=5) as client:
        keys: dict[str, Any] = (await client.get(f"{settings.domain}/.well-known/jwks.json")).json()
    _jwks[settings.domain] = (keys, time.monotonic() + JWKS_TTL)
    return keys


async def orders(request: Request) -> Response:
    """The protected API: a valid bearer token for ORDERS_API, or 401."""
    settings: Settings = request.app.state.settings
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise JWTError("no bearer token")
        claims = jwt.decode(
            token,
            await tenant_jwks(settings),
            algorithms=["RS256"],
            audience=ORDERS_API,
            issuer=settings.domain + "/",
            options={"verify_at_hash": False},
        )
    except JWTError as exc:
        headers = {"www-authenticate": 'Bearer error="invalid_token"'}
        return JSONResponse({"error": "invalid_token", "detail": str(exc)}, 401, headers=headers)
    return JSONResponse({"sub": claims["sub"], "orders": [{"id": 1, "item": "tea"}]})


async def widget(request: Request) -> Response:
    """The dashboard widget's data: the API called with the user's (renewed) token."""
    settings: Settings = request.app.state.settings
    # min_ttl=1: the dev tenant can make tokens last seconds, to show the renewal.
    token = await get_access_token(request, min_ttl=1)
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(
            settings.app_base_url + RESOURCE_PATH,
            headers={"authorization": f"Bearer {token.token}"},
        )
    try:
        body = answer.json()
    except ValueError:  # not the API's JSON (a proxy's error page, say): shown, not a 500
        body = {"error": "not_json", "body": answer.text[:200]}
    return JSONResponse(
        {"status": answer.status_code, "api": body, "token_expires_at": token.expires_at}
    )


def routes() -> list[Route]:
    return [Route(RESOURCE_PATH, orders), Route("/api/widget", widget)]
