"""Authlib's authorization-server components wired to the dev tenant's in-memory records.

Authlib does the protocol: client authentication, redirect-URI and PKCE checks, code and
refresh-token grants, prompt handling and ID-token signing. This module only supplies the
storage callbacks and the Auth0 behaviour Authlib cannot know about (the post-login Action).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    AuthorizationServer,
    ClientMixin,
    InvalidRequestError,
    OAuth2Request,
    grants,
    scope_to_list,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken

if TYPE_CHECKING:
    from example_app.dev_tenant.tenant import DevTenant

CLIENT_AUTH_METHODS: list[str] = ["client_secret_basic", "client_secret_post"]
ACCESS_TOKEN_LIFETIME = 3600
MANAGEMENT_TOKEN_LIFETIME = 86400
CODE_LIFETIME = 60
MANAGEMENT_SCOPES = "read:users update:users delete:users update:users_app_metadata"


@dataclass
class DevClient(ClientMixin):  # type: ignore[misc]
    """A registered application (confidential: it authenticates with its secret)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    logout_urls: list[str] = field(default_factory=list)
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


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request from values already read off a Starlette request (Authlib is sync)."""

    def __init__(
        self, method: str, url: str, headers: Mapping[str, str], data: Mapping[str, str]
    ) -> None:
        # Starlette's Headers stay as they are: Authlib looks up "Authorization" case-sensitively.
        super().__init__(method, url, headers=headers)
        self._data = dict(data)
        self.payload = BasicOAuth2Payload(self._data)

    @property
    def args(self) -> dict[str, str]:
        return self._data if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        return self._data if self.method == "POST" else {}


class PKCE(CodeChallenge):  # type: ignore[misc]
    """S256 only, and required: stricter than Auth0, so a client that forgets PKCE fails here."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        # Authlib would take a challenge without a method as "plain"; Auth0 has S256 only.
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required: code_challenge_method=S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: Code) -> str | None:
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: Code) -> str | None:
        return authorization_code.code_challenge_method


class _IdTokenSigning:
    """How every ID token is made: RS256 with the tenant's current key, profile by scope."""

    def __init__(self, tenant: DevTenant) -> None:
        self.tenant = tenant

    def resolve_client_private_key(self, client: DevClient) -> Any:
        return self.tenant.keys.current

    def get_client_algorithm(self, client: DevClient) -> str:
        return "RS256"

    def get_encode_header(self, client: DevClient) -> dict[str, str]:
        return {"alg": "RS256", "typ": "JWT", "kid": str(self.tenant.keys.current.kid)}

    def get_client_claims(self, client: DevClient) -> dict[str, Any]:
        return {"iss": self.tenant.issuer, "aud": client.client_id}

    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        return self.tenant.id_token_profile(user["user_id"], scope)


class IdTokenOnCode(_IdTokenSigning, OpenIDCode):  # type: ignore[misc]
    def __init__(self, tenant: DevTenant) -> None:
        _IdTokenSigning.__init__(self, tenant)
        OpenIDCode.__init__(self, require_nonce=True)

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # codes are single-use and short-lived; replay is caught at the client


class IdTokenOnRefresh(_IdTokenSigning, OpenIDToken):  # type: ignore[misc]
    pass


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        self.server.tenant.codes[code] = Code(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope or "",
            user_id=request.user["user_id"],
            nonce=data.get("nonce"),
            auth_time=int(request.user.get("auth_time", time.time())),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            expires_at=time.time() + CODE_LIFETIME,
        )

    def query_authorization_code(self, code: str, client: DevClient) -> Code | None:
        record: Code | None = self.server.tenant.codes.get(code)
        if record is None or record.client_id != client.client_id:
            return None
        if record.expires_at < time.time():
            return None
        return record

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.tenant.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any] | None:
        user: dict[str, Any] | None = self.server.tenant.users.get(authorization_code.user_id)
        return user


class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
        rotate: bool = self.server.tenant.rotate_refresh_tokens
        return rotate

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        tokens = self.server.tenant.refresh_tokens
        record: RefreshRecord | None = tokens.get(refresh_token)
        if record is not None and record.revoked:
            # Like Auth0's rotation: reusing a spent token revokes its whole family.
            for other in tokens.values():
                if (other.client_id, other.user_id) == (record.client_id, record.user_id):
                    other.revoked = True
            return None
        return record

    def authenticate_user(self, refresh_token: RefreshRecord) -> dict[str, Any] | None:
        tenant = self.server.tenant
        if tenant.users.get(refresh_token.user_id) is None:
            return None
        # The post-login Action runs on refresh too, and denies flagged users (Auth0: 403).
        if tenant.users.is_blocked(refresh_token.user_id):
            raise AccessDeniedError(description="user is blocked", status_code=403)
        user: dict[str, Any] | None = tenant.users.get(refresh_token.user_id)
        return user

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            refresh_token.revoked = True


class ManagementGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        super().validate_token_request()
        audience = self.request.payload.data.get("audience")
        if audience != self.server.tenant.management_audience:
            raise AccessDeniedError(
                description=f"Service not enabled within domain: {audience}", status_code=403
            )


class TenantServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, tenant: DevTenant) -> None:
        super().__init__()
        self.tenant = tenant
        self.register_token_generator("default", self._generate_token)
        self.register_grant(CodeGrant, [PKCE(), IdTokenOnCode(tenant)])
        self.register_grant(RefreshGrant, [IdTokenOnRefresh(tenant)])
        self.register_grant(ManagementGrant)

    def query_client(self, client_id: str) -> DevClient | None:
        return self.tenant.clients.get(client_id)

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def _generate_token(
        self,
        grant_type: str,
        client: DevClient,
        user: dict[str, Any] | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        if grant_type == "client_credentials":
            return {
                "token_type": "Bearer",
                "access_token": secrets.token_urlsafe(32),
                "expires_in": MANAGEMENT_TOKEN_LIFETIME,
                "scope": MANAGEMENT_SCOPES,
            }
        token = {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(32),
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "scope": scope or "",
        }
        # Like Auth0: a refresh token only for offline_access.
        if include_refresh_token and "offline_access" in scope_to_list(scope or ""):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        tenant = self.tenant
        client_id = request.client.client_id
        if request.payload.grant_type == "client_credentials":
            user_id, audience = None, tenant.management_audience
        else:
            user_id, audience = request.user["user_id"], tenant.issuer + "userinfo"
        tenant.access_tokens[token["access_token"]] = AccessRecord(
            client_id,
            user_id,
            token["scope"],
            audience,
            time.time() + int(token["expires_in"]),
        )
        if "refresh_token" in token and user_id is not None:
            tenant.refresh_tokens[token["refresh_token"]] = RefreshRecord(
                token["refresh_token"], client_id, user_id, token["scope"]
            )
