"""What the dev tenant stores: registered clients, codes, refresh and access tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oidc.core import AuthorizationCodeMixin

CLIENT_AUTH_METHODS: list[str] = ["client_secret_basic", "client_secret_post"]


@dataclass
class DevClient(ClientMixin):  # type: ignore[misc]
    """A registered application (confidential: it authenticates with its secret)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    logout_urls: list[str] = field(default_factory=list)
    # OIDC Back-Channel Logout 1.0: where the tenant POSTs logout tokens, if anywhere.
    backchannel_logout_uri: str | None = None
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in CLIENT_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    nonce: str | None
    auth_time: int
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float
    # The SSO session the login belongs to (the ID token's sid).
    sid: str | None = None
    # The API the login asked a token for (Auth0's ``audience``); None: userinfo only.
    audience: str | None = None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass
class RefreshRecord:
    token: str
    client_id: str
    user_id: str
    scope: str
    revoked: bool = False
    sid: str | None = None
    # The login's API: a refresh without ``audience`` gets a token for it, as on Auth0.
    audience: str | None = None

    def check_client(self, client: DevClient) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope


@dataclass
class AccessRecord:
    client_id: str
    user_id: str | None
    scope: str
    audience: str
    expires_at: float
