"""Authlib's authorization-server components wired to the dev tenant's in-memory records.

Authlib does the protocol: client authentication, redirect-URI and PKCE checks, code and
refresh-token grants, prompt handling and ID-token signing. This module only supplies the
storage callbacks and the Auth0 behaviour Authlib cannot know about (the post-login Action).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    AuthorizationServer,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    grants,
    scope_to_list,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken

from dev_tenant.records import (
    CLIENT_AUTH_METHODS,
    AccessRecord,
    Code,
    DevClient,
    RefreshRecord,
)
from dev_tenant.state import TenantState

MANAGEMENT_TOKEN_LIFETIME = 86400
CODE_LIFETIME = 60
MANAGEMENT_SCOPES = "read:users update:users delete:users update:users_app_metadata"


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request from values already read off a Starlette request (Authlib is sync)."""

    #: The API this grant's access token is for (None: userinfo only), and the login's,
    #: which a new refresh token keeps: set while the token is made, read when it is saved.
    audience: str | None = None
    default_audience: str | None = None

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

    def __init__(self, state: TenantState) -> None:
        self.state = state

    def resolve_client_private_key(self, client: DevClient) -> Any:
        return self.state.keys.current

    def get_client_algorithm(self, client: DevClient) -> str:
        return "RS256"

    def get_encode_header(self, client: DevClient) -> dict[str, str]:
        return {"alg": "RS256", "typ": "JWT", "kid": str(self.state.keys.current.kid)}

    def get_client_claims(self, client: DevClient) -> dict[str, Any]:
        return {"iss": self.state.issuer, "aud": client.client_id}

    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        claims = self.state.id_token_profile(user["user_id"], scope)
        # Auth0 puts the login session's id in every ID token (nextjs-auth0 keeps it).
        if user.get("sid"):
            claims["sid"] = user["sid"]
        return claims


class IdTokenOnCode(_IdTokenSigning, OpenIDCode):  # type: ignore[misc]
    def __init__(self, state: TenantState) -> None:
        _IdTokenSigning.__init__(self, state)
        OpenIDCode.__init__(self, require_nonce=True)

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # codes are single-use and short-lived; replay is caught at the client


class IdTokenOnRefresh(_IdTokenSigning, OpenIDToken):  # type: ignore[misc]
    pass


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 §2: the ``resource`` asked for is unknown."""

    error = "invalid_target"


class _AudienceTokens:
    """Access tokens for an API are JWTs with its ``aud`` (Auth0's shape); tokens for
    userinfo alone stay opaque, as Auth0's are."""

    request: FormRequest
    server: TenantServer

    def token_audiences(self) -> tuple[str | None, str | None]:
        """(this token's API, the login's API)."""
        raise NotImplementedError

    def generate_token(self, user: Any = None, scope: Any = None, **options: Any) -> Any:
        token = super().generate_token(user=user, scope=scope, **options)  # type: ignore[misc]
        audience, default = self.token_audiences()
        self.request.audience, self.request.default_audience = audience, default
        if audience:
            token["access_token"] = self.server.state.api_access_token(
                self.request.client.client_id,
                user["user_id"],
                audience,
                token["scope"],
                int(token["expires_in"]),
            )
        return token


class CodeGrant(_AudienceTokens, grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def token_audiences(self) -> tuple[str | None, str | None]:
        audience: str | None = self.request.authorization_code.audience
        return audience, audience

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        self.server.state.codes[code] = Code(
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
            sid=request.user.get("sid"),
            audience=data.get("audience") or data.get("resource"),
        )

    def query_authorization_code(self, code: str, client: DevClient) -> Code | None:
        record: Code | None = self.server.state.codes.get(code)
        if record is None or record.client_id != client.client_id:
            return None
        if record.expires_at < time.time():
            return None
        return record

    def delete_authorization_code(self, authorization_code: Code) -> None:
        self.server.state.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any] | None:
        user = self.server.state.users.get(authorization_code.user_id)
        return {**user, "sid": authorization_code.sid} if user is not None else None


class RefreshGrant(_AudienceTokens, grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        super().validate_token_request()
        data = self.request.payload.data
        audience, resource = data.get("audience"), data.get("resource")
        known = self.server.state.apis
        if audience and audience not in known:
            # What Auth0 answers for an API identifier it does not have.
            raise AccessDeniedError(description=f"Service not found: {audience}", status_code=403)
        if resource and resource not in known:
            raise InvalidTargetError(description=f"Unknown resource: {resource}")

    def token_audiences(self) -> tuple[str | None, str | None]:
        data = self.request.payload.data
        default: str | None = self.request.refresh_token.audience
        asked = data.get("audience") or data.get("resource")
        # Multi-Resource Refresh Token: a refresh may ask for another known API. Without a
        # policy Auth0 ignores the request and answers for the login's audience.
        if asked and self.server.state.multi_resource_refresh:
            return asked, default
        return default, default

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
        rotate: bool = self.server.state.rotate_refresh_tokens
        return rotate

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        tokens = self.server.state.refresh_tokens
        record: RefreshRecord | None = tokens.get(refresh_token)
        if record is not None and record.revoked:
            # Like Auth0's rotation: reusing a spent token revokes its whole family.
            for other in tokens.values():
                if (other.client_id, other.user_id) == (record.client_id, record.user_id):
                    other.revoked = True
            return None
        return record

    def authenticate_user(self, refresh_token: RefreshRecord) -> dict[str, Any] | None:
        tenant = self.server.state
        if tenant.users.get(refresh_token.user_id) is None:
            return None
        # The post-login Action runs on refresh too, and denies flagged users (Auth0: 403).
        if tenant.users.is_blocked(refresh_token.user_id):
            raise AccessDeniedError(description="user is blocked", status_code=403)
        user = tenant.users.get(refresh_token.user_id)
        return {**user, "sid": refresh_token.sid} if user is not None else None

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            refresh_token.revoked = True


class ManagementGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        super().validate_token_request()
        audience = self.request.payload.data.get("audience")
        if audience != self.server.state.management_audience:
            raise AccessDeniedError(
                description=f"Service not enabled within domain: {audience}", status_code=403
            )


class TenantServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, state: TenantState) -> None:
        super().__init__()
        self.state = state
        self.register_token_generator("default", self._generate_token)
        self.register_grant(CodeGrant, [PKCE(), IdTokenOnCode(state)])
        self.register_grant(RefreshGrant, [IdTokenOnRefresh(state)])
        self.register_grant(ManagementGrant)

    def query_client(self, client_id: str) -> DevClient | None:
        return self.state.clients.get(client_id)

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
            "expires_in": self.state.access_token_lifetime,
            "scope": scope or "",
        }
        # Like Auth0: a refresh token only for offline_access.
        if include_refresh_token and "offline_access" in scope_to_list(scope or ""):
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        tenant = self.state
        client_id = request.client.client_id
        if request.payload.grant_type == "client_credentials":
            user_id, audience = None, tenant.management_audience
        else:
            user_id = request.user["user_id"]
            audience = getattr(request, "audience", None) or tenant.issuer + "userinfo"
        tenant.access_tokens[token["access_token"]] = AccessRecord(
            client_id,
            user_id,
            token["scope"],
            audience,
            time.time() + int(token["expires_in"]),
        )
        if "refresh_token" in token and user_id is not None:
            tenant.refresh_tokens[token["refresh_token"]] = RefreshRecord(
                token["refresh_token"],
                client_id,
                user_id,
                token["scope"],
                sid=request.user.get("sid"),
                audience=getattr(request, "default_audience", None),
            )
