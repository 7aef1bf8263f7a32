"""OIDC Back-Channel Logout 1.0 from the tenant's side: logout tokens POSTed to clients."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import httpx
from joserfc import jwt

from dev_tenant.state import TenantState

logger = logging.getLogger("dev_tenant")

EVENT = "http://schemas.openid.net/event/backchannel-logout"


def logout_token(state: TenantState, client_id: str, sub: str, sid: str | None) -> str:
    """A signed logout token (2.4): iss, aud, iat, exp, jti, events, sub and the sid."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": state.issuer,
        "aud": client_id,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
        "events": {EVENT: {}},
        "sub": sub,
    }
    if sid:
        claims["sid"] = sid
    key = state.keys.current
    header = {"alg": "RS256", "typ": "logout+jwt", "kid": str(key.kid)}
    state.logout_tokens.append((client_id, claims))
    return jwt.encode(header, claims, key)


async def send_logout(state: TenantState, sub: str, sid: str | None) -> None:
    """Tell every client with a back-channel URI that this login (or user) ended."""
    targets = [c for c in state.clients.values() if c.backchannel_logout_uri]
    if not targets:
        return
    async with httpx.AsyncClient(timeout=5) as client:
        for registered in targets:
            token = logout_token(state, registered.client_id, sub, sid)
            try:
                response = await client.post(
                    str(registered.backchannel_logout_uri), data={"logout_token": token}
                )
            except httpx.HTTPError as exc:
                # Auth0 does not retry either: the client's own session lifetime is the bound.
                logger.warning("back-channel logout to %s failed: %s", registered.client_id, exc)
                continue
            if response.status_code != 200:
                logger.warning(
                    "back-channel logout to %s answered %s",
                    registered.client_id,
                    response.status_code,
                )
