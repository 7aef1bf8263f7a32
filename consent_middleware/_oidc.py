"""The OpenID Connect relying party: discovery, JWKS, code and refresh grants."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cachetools import TTLCache

from . import _jose
from ._config import Settings
from ._exceptions import IdentityProviderError, IdTokenError, TokenEndpointError
from ._session import Session, TokenSet, Transaction

logger = logging.getLogger("consent_middleware")

METADATA_TTL = 3600
JWKS_TTL = 600
# An unknown kid may mean the provider rotated its keys, or a forged header: refetch
# the JWKS for it, but never more often than this, so forged tokens cannot hammer the IdP.
JWKS_MIN_REFETCH_INTERVAL = 30
# Parameters the middleware sets itself; a caller of /auth/login cannot override them.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "response_mode",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
        "returnTo",
    }
)


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    token_auth_methods: tuple[str, ...]

    @classmethod
    def parse(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise IdentityProviderError("the discovery document is not a JSON object")
        try:
            issuer = str(document["issuer"])
            meta = cls(
                issuer=issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                end_session_endpoint=document.get("end_session_endpoint") or None,
                # RFC 8414: absent means client_secret_basic.
                token_auth_methods=tuple(
                    document.get("token_endpoint_auth_methods_supported")
                    or ("client_secret_basic",)
                ),
            )
        except KeyError as exc:
            raise IdentityProviderError(f"the discovery document lacks {exc.args[0]!r}") from None
        # OIDC Discovery 4.3: the issuer must be the URL the document was fetched from.
        if issuer.rstrip("/") != expected_issuer.rstrip("/"):
            raise IdentityProviderError(
                f"the discovery document names issuer {issuer!r}, expected {expected_issuer!r}"
            )
        return meta


class OIDCClient:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http
        self._owns_http = http is None  # a client passed in is the caller's to close
        self._metadata: TTLCache[str, ProviderMetadata] = TTLCache(maxsize=1, ttl=METADATA_TTL)
        self._jwks: TTLCache[str, _jose.KeySet] = TTLCache(maxsize=1, ttl=JWKS_TTL)
        self._jwks_fetched_at = 0.0
        # Separate locks: the JWKS fetch needs the metadata, and asyncio locks don't nest.
        self._metadata_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()

    @property
    def http(self) -> httpx.AsyncClient:
        # Created on first use: one pooled client for the life of the middleware.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.http_timeout)
        return self._http

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdentityProviderError(
                f"could not fetch the {what}: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise IdentityProviderError(f"the {what} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise IdentityProviderError(f"the {what} is not valid JSON") from None

    async def metadata(self) -> ProviderMetadata:
        meta = self._metadata.get("meta")
        if meta is None:
            async with self._metadata_lock:
                meta = self._metadata.get("meta")
                if meta is None:
                    url = f"{self.settings.domain}/.well-known/openid-configuration"
                    document = await self._get_json(url, "discovery document")
                    meta = ProviderMetadata.parse(document, self.settings.domain)
                    self._metadata["meta"] = meta
        return meta

    async def _key_set(self, refetch: bool = False) -> _jose.KeySet:
        keys = self._jwks.get("keys")
        if keys is not None and not refetch:
            return keys
        async with self._jwks_lock:
            keys = self._jwks.get("keys")
            recently = time.monotonic() - self._jwks_fetched_at < JWKS_MIN_REFETCH_INTERVAL
            if keys is not None and (not refetch or recently):
                return keys
            meta = await self.metadata()
            document = await self._get_json(meta.jwks_uri, "JWKS")
            try:
                keys = _jose.KeySet(document)
            except ValueError as exc:
                raise IdentityProviderError(f"the JWKS is unusable: {exc}") from None
            self._jwks_fetched_at = time.monotonic()
            self._jwks["keys"] = keys
            return keys

    def new_transaction(
        self, return_to: str, purpose: str = "login", expect: str | None = None
    ) -> Transaction:
        return Transaction(
            state=generate_token(43),
            nonce=generate_token(43),
            code_verifier=generate_token(64),
            return_to=return_to,
            purpose=purpose,
            expect=expect,
        )

    async def authorization_url(self, tx: Transaction, extra: dict[str, str]) -> str:
        meta = await self.metadata()
        params = {k: v for k, v in extra.items() if k not in RESERVED_AUTHORIZE_PARAMS}
        if self.settings.audience:
            params.setdefault("audience", self.settings.audience)
        if tx.purpose == "silent":
            params["prompt"] = "none"
        uri: str = prepare_grant_uri(
            meta.authorization_endpoint,
            self.settings.client_id,
            "code",
            redirect_uri=self.settings.callback_url,
            scope=self.settings.scope,
            state=tx.state,
            nonce=tx.nonce,
            code_challenge=create_s256_code_challenge(tx.code_verifier),
            code_challenge_method="S256",
            **params,
        )
        return uri

    async def client_auth(
        self, form: dict[str, str], client_id: str, client_secret: str
    ) -> tuple[str, dict[str, str], httpx.BasicAuth | None]:
        """Token endpoint URL, form and auth for the method the provider supports."""
        meta = await self.metadata()
        if "client_secret_basic" in meta.token_auth_methods:
            return meta.token_endpoint, form, httpx.BasicAuth(client_id, client_secret)
        if "client_secret_post" in meta.token_auth_methods:
            form = {**form, "client_id": client_id, "client_secret": client_secret}
            return meta.token_endpoint, form, None
        raise IdentityProviderError(
            "the provider supports neither client_secret_basic nor client_secret_post"
        )

    async def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        url, form, auth = await self.client_auth(
            form, self.settings.client_id, self.settings.client_secret
        )
        try:
            response = await self.http.post(
                url,
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise IdentityProviderError(
                f"could not reach the token endpoint: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            # A 5xx is an outage, whatever its body says: "try again", not "refused".
            if (
                response.status_code < 500
                and isinstance(body, dict)
                and isinstance(body.get("error"), str)
            ):
                raise TokenEndpointError(
                    body["error"], str(body.get("error_description", "")), response.status_code
                )
            raise IdentityProviderError(f"the token endpoint answered HTTP {response.status_code}")
        if not isinstance(body.get("id_token"), str) or not isinstance(
            body.get("access_token"), str
        ):
            raise IdentityProviderError("the token endpoint returned no ID token")
        return body

    async def verify_id_token(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        meta = await self.metadata()
        header = _jose.unverified_header(id_token)
        # Before any key lookup, so a forged token cannot make us refetch the JWKS.
        alg = _jose.accepted_algorithm(header)
        kid = header.get("kid")
        key = (await self._key_set()).find(kid, alg)
        if key is None:
            key = (await self._key_set(refetch=True)).find(kid, alg)
        if key is None:
            raise IdTokenError("the ID token was signed with a key the provider does not publish")
        return _jose.verify_id_token(
            id_token,
            key,
            issuer=meta.issuer,
            client_id=self.settings.client_id,
            nonce=nonce,
            leeway=self.settings.clock_leeway,
        )

    async def exchange_code(self, code: str, tx: Transaction) -> tuple[dict[str, Any], TokenSet]:
        body = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.settings.callback_url,
                "code_verifier": tx.code_verifier,
            }
        )
        claims = await self.verify_id_token(body["id_token"], tx.nonce)
        return claims, token_set_from(body)

    async def refresh(self, session: Session) -> Session:
        """Run the refresh-token grant and return the session with the new claims."""
        refresh_token = session.token_set.refresh_token
        if not refresh_token:
            raise TokenEndpointError("invalid_grant", "the session holds no refresh token")
        body = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        claims = await self.verify_id_token(body["id_token"], None)
        if claims["sub"] != session.user.get("sub"):
            raise IdTokenError("the refreshed ID token is for a different user")
        token_set = token_set_from(body, previous_refresh_token=refresh_token)
        return session.refreshed(claims, token_set)

    async def logout_url(self, id_token: str | None, return_to: str) -> str:
        try:
            meta = await self.metadata()
        except IdentityProviderError:
            # The IdP is down: the local session is gone anyway, so go home.
            return return_to
        if meta.end_session_endpoint:
            params = {"post_logout_redirect_uri": return_to, "client_id": self.settings.client_id}
            if id_token:
                params["id_token_hint"] = id_token
            return _with_query(meta.end_session_endpoint, params)
        if _looks_like_auth0(meta.issuer):
            return _with_query(
                f"{self.settings.domain}/v2/logout",
                {"client_id": self.settings.client_id, "returnTo": return_to},
            )
        return return_to


def token_set_from(body: dict[str, Any], previous_refresh_token: str | None = None) -> TokenSet:
    expires_in = body.get("expires_in")
    expires_at = int(time.time()) + int(expires_in) if isinstance(expires_in, int | float) else 0
    return TokenSet(
        access_token=body["access_token"],
        id_token=body["id_token"],
        # Without rotation the provider returns no new refresh token: keep the old one.
        refresh_token=body.get("refresh_token") or previous_refresh_token,
        expires_at=expires_at,
        scope=body.get("scope"),
    )


def _with_query(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{urlencode(params)}"


def _looks_like_auth0(issuer: str) -> bool:
    # Auth0 issuers are "https://{domain}/"; its /v2/logout exists on custom domains too,
    # so any issuer that is a bare origin with a trailing slash gets the Auth0 fallback.
    parts = urlsplit(issuer)
    return parts.path == "/"
