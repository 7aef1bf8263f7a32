"""A small protected API and the dashboard widget that calls it with the user's token.

``/resource/orders`` stands for an API of your own (served here so the example is one
process): it trusts nothing but the bearer token. With python-jose it checks the RS256
signature against the provider's published keys and requires ``iss`` (from the provider's
discovery document), ``aud`` (this API), ``exp`` and ``sub``: python-jose checks a claim
only when the token has it, unless told to require it. Keys are cached; a token signed with
a key not seen yet (a rotation) fetches them again, one fetch at a time and at most every
``REFETCH_INTERVAL`` seconds; a failed fetch keeps the keys held so far, or is a 503.
``/api/widget`` is the app's side: behind the gate, it takes the user's token with
``get_access_token()`` (renewed with the refresh token when it runs out) and calls the API
with it.
"""

from __future__ import annotations

import asyncio
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
KEYS_TTL = 600
# At most one fetch in this many seconds, for whatever reason (a new kid, a failure).
REFETCH_INTERVAL = 5
# An answer about the signed-in user: for this browser only.
PRIVATE = {"Cache-Control": "private, no-store"}
REQUIRED = {"require_iss": True, "require_aud": True, "require_exp": True, "require_sub": True}


class KeysUnavailable(Exception):
    """The provider's discovery document or keys could not be read."""


class ProviderKeys:
    """One provider's issuer and signing keys, as an API needs them to check tokens."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.issuer = ""
        self.keys: dict[str, dict[str, Any]] = {}
        self.expires = self.tried = 0.0
        # One fetch at a time: a burst of tokens with made-up key ids costs one.
        self._fetching = asyncio.Lock()

    async def key(self, kid: object) -> dict[str, Any] | None:
        """The key ``kid`` names (None when the provider has no such key)."""
        if not isinstance(kid, str):
            return None
        if time.monotonic() > self.expires or kid not in self.keys:
            async with self._fetching:
                await self._refresh(kid)
        return self.keys.get(kid)

    async def _refresh(self, kid: str) -> None:
        now = time.monotonic()
        due = now > self.expires or kid not in self.keys
        if not due or now - self.tried < REFETCH_INTERVAL:
            # Fetched meanwhile, or lately: a made-up kid never makes the API hammer the
            # provider. Keys that expired still serve while a new fetch waits its turn.
            if not self.keys:
                raise KeysUnavailable("the provider's keys were not fetched lately")
            return
        self.tried = now
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                found = await client.get(f"{self.domain}/.well-known/openid-configuration")
                discovery = found.raise_for_status().json()
                jwks = (await client.get(discovery["jwks_uri"])).raise_for_status().json()
            keys = {key["kid"]: key for key in jwks["keys"] if isinstance(key.get("kid"), str)}
            issuer = discovery["issuer"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if self.keys:
                return  # the keys held so far serve until the provider answers again
            raise KeysUnavailable(type(exc).__name__) from exc
        self.issuer, self.keys = str(issuer), keys
        self.expires = time.monotonic() + KEYS_TTL


_providers: dict[str, ProviderKeys] = {}


async def verified_claims(token: str, settings: Settings) -> dict[str, Any]:
    """The token's claims once every check holds; JWTError otherwise."""
    keys = _providers.setdefault(settings.domain, ProviderKeys(settings.domain))
    header = jwt.get_unverified_header(token)
    key = await keys.key(header.get("kid")) if header.get("alg") == "RS256" else None
    if key is None:
        raise JWTError("the token is not signed with one of the provider's keys")
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=ORDERS_API,
        issuer=keys.issuer,
        options={**REQUIRED, "verify_at_hash": False},
    )
    return claims


async def orders(request: Request) -> Response:
    """The protected API: a valid bearer token for ORDERS_API, or 401."""
    settings: Settings = request.app.state.settings
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise JWTError("no bearer token")
        claims = await verified_claims(token, settings)
    except JWTError as exc:
        headers = {"www-authenticate": 'Bearer error="invalid_token"'}
        return JSONResponse({"error": "invalid_token", "detail": str(exc)}, 401, headers=headers)
    except KeysUnavailable:
        body = {"error": "temporarily_unavailable"}
        return JSONResponse(body, 503, headers={"retry-after": "5"})
    return JSONResponse({"sub": claims["sub"], "orders": [{"id": 1, "item": "tea"}]})


async def widget(request: Request) -> Response:
    """The dashboard widget's data: the API called with the user's (renewed) token."""
    settings: Settings = request.app.state.settings
    # min_ttl=1: the dev tenant can make tokens last seconds, to show the renewal.
    token = await get_access_token(request, min_ttl=1)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(
                settings.app_base_url + RESOURCE_PATH,
                headers={"authorization": f"Bearer {token.token}"},
            )
    except httpx.HTTPError as exc:  # the API unreachable: said so, not a 500
        body = {"status": 502, "api": {"error": type(exc).__name__}}
        return JSONResponse(body, 502, headers=PRIVATE)
    try:
        body = answer.json()
    except ValueError:  # not the API's JSON (a proxy's error page, say): shown, not a 500
        body = {"error": "not_json", "body": answer.text[:200]}
    return JSONResponse(
        {"status": answer.status_code, "api": body, "token_expires_at": token.expires_at},
        headers=PRIVATE,
    )


def routes() -> list[Route]:
    return [Route(RESOURCE_PATH, orders), Route("/api/widget", widget)]
