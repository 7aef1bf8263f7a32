"""Everything the dev tenant remembers, in one object every part of it receives.

Nothing here knows HTTP: the authorization server (``authorization``), the Management API
(``management``) and the ASGI app (``tenant``) read and write this state, and never each
other. All of it lives in memory and vanishes on restart.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import scope_to_list
from joserfc import jwt
from joserfc.jwk import KeyParameters, RSAKey

from dev_tenant.directory import UserDirectory
from dev_tenant.records import AccessRecord, Code, DevClient, RefreshRecord

# What the post-login Action copies from app_metadata.consent into the ID token.
CLAIM_FIELDS = ("given", "version", "date", "text_sha256", "text_details", "purposes", "withdrawn")


class KeyRing:
    """RS256 signing keys: the newest signs, all stay published so older tokens still verify."""

    def __init__(self) -> None:
        self.keys: list[RSAKey] = []
        self.rotate()

    @property
    def current(self) -> RSAKey:
        return self.keys[-1]

    def rotate(self) -> None:
        params: KeyParameters = {"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"}
        self.keys.append(RSAKey.generate_key(2048, parameters=params, private=True))

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self.keys]}


@dataclass
class Failure:
    path_suffix: str
    status: int | None  # None: answer normally, after the delay
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class SsoSession:
    """One login at the tenant (its cookie in the browser): the ID tokens' ``sid``."""

    user_id: str
    auth_time: int
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(16))


class TenantState:
    def __init__(
        self,
        base_url: str,
        clients: Iterable[DevClient],
        consent_claim: str | None = None,
        *,
        advertise_end_session: bool = True,
        rotate_refresh_tokens: bool = True,
        access_token_lifetime: int = 3600,
        apis: Iterable[str] = (),
        multi_resource_refresh: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.issuer = self.base_url + "/"
        self.management_audience = self.base_url + "/api/v2/"
        self.clients = {client.client_id: client for client in clients}
        # Mutable on purpose: what the post-login Action names the claim (tests break it).
        self.consent_claim = consent_claim
        self.advertise_end_session = advertise_end_session
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_token_lifetime = access_token_lifetime
        # The API identifiers the tenant knows (Auth0's APIs); tokens for them are JWTs.
        self.apis = tuple(apis)
        # Auth0's Multi-Resource Refresh Token policy for every known API. Without it a
        # refresh with ``audience`` quietly answers for the login's audience, as Auth0 does.
        self.multi_resource_refresh = multi_resource_refresh
        self.users = UserDirectory()
        self.keys = KeyRing()
        self.codes: dict[str, Code] = {}
        self.refresh_tokens: dict[str, RefreshRecord] = {}
        self.access_tokens: dict[str, AccessRecord] = {}
        self.sessions: dict[str, SsoSession] = {}  # SSO cookie value -> login
        self.logins: dict[str, dict[str, Any]] = {}  # pending /u/login -> authorize params
        self.requests: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        # Logout tokens sent: (client_id, claims), for tests and the curious.
        self.logout_tokens: list[tuple[str, dict[str, Any]]] = []

    def id_token_profile(self, user_id: str, scope: str) -> dict[str, Any]:
        """The ID token's user claims, then what the shipped post-login Action adds."""
        user = self.users.get(user_id) or {}
        scopes = scope_to_list(scope) or []
        claims: dict[str, Any] = {"sub": user_id}
        if "profile" in scopes:
            for key in ("name", "nickname", "updated_at"):
                claims[key] = user.get(key)
        if "email" in scopes:
            claims["email"] = user.get("email")
            claims["email_verified"] = user.get("email_verified")
        # As actions/consent-claim.js: the current state of app_metadata.consent (which a
        # user cannot write), never its history, so the token stays the same size.
        consent = user.get("app_metadata", {}).get("consent")
        if self.consent_claim and isinstance(consent, dict):
            claims[self.consent_claim] = {
                key: consent[key] for key in CLAIM_FIELDS if key in consent
            }
        return claims

    def api_access_token(
        self, client_id: str, user_id: str, audience: str, scope: str, lifetime: int
    ) -> str:
        """A JWT access token for one of the tenant's APIs, as Auth0 issues them (RFC 9068
        profile): RS256 with the current key; ``aud`` also names userinfo under openid."""
        now = int(time.time())
        scopes = scope_to_list(scope) or []
        claims = {
            "iss": self.issuer,
            "sub": user_id,
            "aud": [audience, self.issuer + "userinfo"] if "openid" in scopes else audience,
            "iat": now,
            "exp": now + lifetime,
            "scope": scope,
            "azp": client_id,
            "jti": secrets.token_urlsafe(12),
        }
        key = self.keys.current
        header = {"alg": "RS256", "typ": "at+jwt", "kid": str(key.kid)}
        return jwt.encode(header, claims, key)

    def bearer(self, headers: Mapping[str, str], audience: str) -> AccessRecord | None:
        """The access token of an ``Authorization: Bearer`` header, if valid for ``audience``."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        record = self.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if record is None or record.expires_at < time.time() or record.audience != audience:
            return None
        return record

    def take_failure(self, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.times > 0 and path.endswith(failure.path_suffix):
                failure.times -= 1
                return failure
        return None
