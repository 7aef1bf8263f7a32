"""What the token endpoint hands out: token sets, verified grant results, M2M tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: The least time before expiry a token is renewed at, however short-lived it is.
MIN_LEEWAY = 5


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The tokens of one token-endpoint answer (RFC 6749 5.1, OIDC Core 3.1.3.3)."""

    access_token: str
    id_token: str
    refresh_token: str | None = None
    # Unix seconds; 0 when the provider did not say (no ``expires_in``).
    expires_at: int = 0
    scope: str | None = None
    # Unix seconds this server got it; 0 when unknown (a session another writer made).
    issued_at: int = 0


@dataclass(frozen=True)
class TokenResponse:
    """A grant's result: the token set and the ID token's verified claims."""

    token_set: TokenSet
    claims: dict[str, Any]
    # When the grant was sent (Unix seconds, this server's clock): the claims describe the
    # user as of this moment or later.
    requested_at: float


@dataclass(frozen=True)
class AccessToken:
    """A client-credentials grant's result (RFC 6749 4.4.3): no ID token, no refresh token."""

    token: str
    expires_in: float


def token_set_from(body: dict[str, Any], previous_refresh_token: str | None = None) -> TokenSet:
    expires_in = body.get("expires_in")
    now = int(time.time())
    expires_at = now + int(expires_in) if isinstance(expires_in, int | float) else 0
    return TokenSet(
        access_token=body["access_token"],
        id_token=body["id_token"],
        # Without rotation the provider returns no new refresh token: keep the old one.
        refresh_token=body.get("refresh_token") or previous_refresh_token,
        expires_at=expires_at,
        scope=body.get("scope"),
        issued_at=now,
    )


def renewal_leeway(min_ttl: float, expires_at: int, issued_at: int) -> float:
    """How long before ``expires_at`` a token is renewed: ``min_ttl``, but never more than
    half the token's life (from ``issued_at``, when it was got; unknown, 0: ``min_ttl``).
    A provider that issues tokens for no longer than ``min_ttl`` (30 s against the default
    60) would otherwise have every call renew the token, a grant per request: no caller
    could ever get the time asked for, and the provider's rate limit would soon answer."""
    if not issued_at:
        return min_ttl
    return min(min_ttl, max((expires_at - issued_at) / 2, MIN_LEEWAY))


def still_good(
    access_token: str, expires_at: int, issued_at: int, min_ttl: float, now: float
) -> bool:
    """Whether a token (``expires_at`` 0: the provider did not say) is good for ``min_ttl``
    more seconds, or for as long as ``renewal_leeway`` asks of a shorter-lived one."""
    if not access_token:
        return False
    # The first test is the usual answer, with no division: a token far from expiring.
    left = expires_at - now
    return (
        expires_at == 0 or left > min_ttl or left > renewal_leeway(min_ttl, expires_at, issued_at)
    )
