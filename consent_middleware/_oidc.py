"""The OpenID Connect protocol: discovery, JWKS, and the code, refresh and client-credentials
grants.

Like panva's openid-client, this layer returns token sets and verified claims and knows
nothing of cookies or sessions: what goes into a session is the caller's business.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from . import _jose
from ._config import Settings
from ._discovery import ProviderMetadata
from ._exceptions import IdentityProviderError, IdTokenError, TokenEndpointError
from ._tokens import AccessToken, TokenResponse, token_set_from

logger = logging.getLogger("consent_middleware")

METADATA_TTL = 3600
# A refetch that fails keeps the document the provider last gave (its endpoints rarely
# move), asked for again this much later rather than on every request: an outage must not
# turn a loaded gate into one that cannot say where its provider is.
METADATA_RETRY = 30
JWKS_TTL = 600
# An unknown kid may mean the provider rotated its keys, or a forged header: refetch
# the JWKS for it, but never more often than this, so forged tokens cannot hammer the IdP.
JWKS_MIN_REFETCH_INTERVAL = 30
# A logout token older than this is refused; its jti is remembered this long against replay.
LOGOUT_TOKEN_MAX_AGE = 300
# The /authorize parameters a caller may add (through ``/auth/login``'s query or ``extra``):
# those about how the user signs in, as nextjs-auth0 forwards them. Anything else is
# dropped, so a link cannot replace what the client sets itself (client_id, redirect_uri,
# scope, state, nonce, PKCE) or what the tokens are for (Auth0's ``audience``, RFC 8707's
# ``resource``): the configured ``AUTH0_AUDIENCE`` is the only audience ever sent, under
# the name the provider takes (``Settings.audience_parameter_for``).
CALLER_AUTHORIZE_PARAMS = frozenset(
    {
        "screen_hint",  # Auth0 Universal Login: "signup" opens the sign-up form
        "login_hint",  # OIDC Core 3.1.2.1
        "prompt",  # OIDC Core 3.1.2.1, interactive values only (CALLER_PROMPTS)
        "ui_locales",  # OIDC Core 3.1.2.1
        "max_age",  # OIDC Core 3.1.2.1, whole seconds
        "acr_values",  # OIDC Core 3.1.2.1
        "organization",  # Auth0 Organizations
        "invitation",  # Auth0 Organizations
        "connection",  # Auth0: straight to one identity provider
    }
)
# prompt=none belongs to the silent refresh (Purpose.SILENT): from a link it would turn a
# sign-in into an error page whenever the provider needs the user.
CALLER_PROMPTS = frozenset({"login", "consent", "select_account"})
_WHOLE_SECONDS = re.compile(r"[0-9]{1,10}")


def caller_authorize_params(extra: Mapping[str, str]) -> dict[str, str]:
    """The part of ``extra`` a caller may send to /authorize; other names, an empty value,
    a non-interactive ``prompt`` or a ``max_age`` that is not whole seconds are dropped."""
    params: dict[str, str] = {}
    for name, value in extra.items():
        if name not in CALLER_AUTHORIZE_PARAMS or not value.strip():
            continue
        if name == "prompt" and not set(value.split()) <= CALLER_PROMPTS:
            continue
        if name == "max_age" and not _WHOLE_SECONDS.fullmatch(value):
            continue
        params[name] = value
    return params


class OIDCClient:
    """One relying party at one provider, over a pooled HTTP client it does not own."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        # (value, monotonic deadline) pairs: one value each, so no cache object is needed.
        self._metadata: tuple[ProviderMetadata, float] | None = None
        self._jwks: tuple[_jose.KeySet, float] | None = None
        self._jwks_fetched_at = -float("inf")
        # Separate locks: the JWKS fetch needs the metadata, and asyncio locks don't nest.
        self._metadata_lock = asyncio.Lock()
        self._told_local_logout = False
        self._jwks_lock = asyncio.Lock()

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            # The URL said: AUTH0_DOMAIN given without its scheme becomes https://, which a
            # provider on plain http on loopback never answers.
            raise IdentityProviderError(
                f"could not fetch the {what} at {url}: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise IdentityProviderError(f"the {what} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise IdentityProviderError(f"the {what} is not valid JSON") from exc

    async def metadata(self) -> ProviderMetadata:
        cached = self._metadata
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._metadata_lock:
            cached = self._metadata
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            url = f"{self.settings.domain}/.well-known/openid-configuration"
            try:
                document = await self._get_json(url, "discovery document")
                meta = ProviderMetadata.parse(document, self.settings.domain)
            except IdentityProviderError as exc:
                if cached is None:
                    raise
                logger.warning("kept the last discovery document: %s", exc)
                self._metadata = (cached[0], time.monotonic() + METADATA_RETRY)
                return cached[0]
            self._metadata = (meta, time.monotonic() + METADATA_TTL)
            return meta

    @property
    def has_metadata(self) -> bool:
        """Whether the discovery document has loaded (it is kept through an outage)."""
        return self._metadata is not None

    async def _key_set(self, refetch: bool = False) -> _jose.KeySet:
        cached = self._jwks
        if cached is not None and cached[1] > time.monotonic() and not refetch:
            return cached[0]
        async with self._jwks_lock:
            now = time.monotonic()
            cached = self._jwks if self._jwks is not None and self._jwks[1] > now else None
            recently = now - self._jwks_fetched_at < JWKS_MIN_REFETCH_INTERVAL
            if cached is not None and (not refetch or recently):
                return cached[0]
            meta = await self.metadata()
            document = await self._get_json(meta.jwks_uri, "JWKS")
            try:
                keys = _jose.KeySet(document)
            except ValueError as exc:
                raise IdentityProviderError(f"the JWKS is unusable: {exc}") from exc
            self._jwks_fetched_at = time.monotonic()
            self._jwks = (keys, self._jwks_fetched_at + JWKS_TTL)
            return keys

    async def authorization_url(
        self,
        *,
        state: str,
        nonce: str,
        code_verifier: str,
        extra: Mapping[str, str] | None = None,
        prompt: str | None = None,
    ) -> str:
        """The /authorize URL for the code flow with PKCE (RFC 7636, S256 only); of
        ``extra``, only what ``caller_authorize_params`` lets through."""
        meta = await self.metadata()
        params = caller_authorize_params(extra or {})
        if self.settings.audience:
            # RFC 8707 2.1: a resource asked for here is one the refresh token may serve.
            audience = self.settings.audience
            params[self.settings.audience_parameter_for(meta.token_endpoint, audience)] = audience
        if prompt is not None:
            params["prompt"] = prompt
        uri: str = prepare_grant_uri(
            meta.authorization_endpoint,
            self.settings.client_id,
            "code",
            redirect_uri=self.settings.callback_url,
            scope=self.settings.scope,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(code_verifier),
            code_challenge_method="S256",
            **params,
        )
        return uri

    async def _client_auth(
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

    async def _token_request(
        self, form: dict[str, str], client_id: str, client_secret: str
    ) -> dict[str, Any]:
        """POST to the token endpoint; the JSON answer, or a translated error."""
        url, form, auth = await self._client_auth(form, client_id, client_secret)
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
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            # A 5xx is an outage, whatever its body says: "try again", not "refused"; so
            # is a rate limit (Auth0 answers 429 "too_many_requests") and RFC 6749 5.2's
            # "temporarily_unavailable". Any other error answer names its error code.
            if (
                response.status_code < 500
                and response.status_code != 429
                and isinstance(body, dict)
                and isinstance(body.get("error"), str)
                and body["error"] != "temporarily_unavailable"
            ):
                raise TokenEndpointError(
                    body["error"], str(body.get("error_description", "")), response.status_code
                )
            raise IdentityProviderError(f"the token endpoint answered HTTP {response.status_code}")
        if not isinstance(body.get("access_token"), str):
            raise IdentityProviderError("the token endpoint returned no access token")
        return body

    async def _user_grant(
        self, form: dict[str, str], nonce: str | None, previous_refresh_token: str | None = None
    ) -> TokenResponse:
        requested_at = time.time()
        body = await self._token_request(form, self.settings.client_id, self.settings.client_secret)
        if not isinstance(body.get("id_token"), str):
            raise IdentityProviderError("the token endpoint returned no ID token")
        claims = await self.verify_id_token(
            body["id_token"], nonce, access_token=body["access_token"]
        )
        return TokenResponse(token_set_from(body, previous_refresh_token), claims, requested_at)

    async def _signing_key(self, token: str) -> dict[str, Any]:
        """The provider's key that signed ``token`` (refetching the JWKS, rate-limited)."""
        header = _jose.unverified_header(token)
        # Before any key lookup, so a forged token cannot make us refetch the JWKS.
        alg = _jose.accepted_algorithm(header)
        kid = header.get("kid")
        key = (await self._key_set()).find(kid, alg)
        if key is None:
            key = (await self._key_set(refetch=True)).find(kid, alg)
        if key is None:
            raise IdTokenError("the token was signed with a key the provider does not publish")
        return key

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """OIDC Back-Channel Logout 1.0, 2.6: a logout token's verified claims."""
        meta = await self.metadata()
        key = await self._signing_key(token)
        return _jose.verify_logout_token(
            token,
            key,
            issuer=meta.issuer,
            client_id=self.settings.client_id,
            leeway=self.settings.clock_leeway,
            max_age=LOGOUT_TOKEN_MAX_AGE,
        )

    async def stored_id_token_claims(self, id_token: str) -> dict[str, Any]:
        """The claims of an ID token a session holds, its signature verified again."""
        key = await self._signing_key(id_token)  # a malformed token fails before any I/O
        meta = await self.metadata()
        return _jose.verify_id_token_signature(
            id_token, key, issuer=meta.issuer, client_id=self.settings.client_id
        )

    async def verify_id_token(
        self, id_token: str, nonce: str | None, access_token: str | None = None
    ) -> dict[str, Any]:
        meta = await self.metadata()
        key = await self._signing_key(id_token)
        return _jose.verify_id_token(
            id_token,
            key,
            issuer=meta.issuer,
            client_id=self.settings.client_id,
            nonce=nonce,
            leeway=self.settings.clock_leeway,
            access_token=access_token,
        )

    async def authorization_code_grant(
        self, code: str, *, code_verifier: str, nonce: str
    ) -> TokenResponse:
        """OIDC Core 3.1.3: exchange the code; the ID token must carry this login's nonce."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.callback_url,
            "code_verifier": code_verifier,
        }
        audience = self.settings.audience
        if (
            audience
            and self.settings.audience_parameter_for(
                (await self.metadata()).token_endpoint, audience
            )
            == "resource"
        ):
            # RFC 8707 2.2: the access token is for this resource, not the userinfo one.
            form["resource"] = audience
        return await self._user_grant(form, nonce)

    async def refresh_token_grant(self, refresh_token: str, *, sub: str) -> TokenResponse:
        """OIDC Core 12.2: the new ID token must be for the same ``sub``."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        result = await self._user_grant(form, None, previous_refresh_token=refresh_token)
        if result.claims["sub"] != sub:
            raise IdTokenError("the refreshed ID token is for a different user")
        return result

    async def client_credentials_grant(
        self, *, client_id: str, client_secret: str, audience: str
    ) -> AccessToken:
        """RFC 6749 4.4, with Auth0's ``audience`` naming the API the token is for."""
        form = {"grant_type": "client_credentials", "audience": audience}
        body = await self._token_request(form, client_id, client_secret)
        expires_in = body.get("expires_in", 86400)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 86400.0
        return AccessToken(body["access_token"], lifetime)

    async def revoke_refresh_token(self, refresh_token: str) -> bool:
        """RFC 7009: revoke the token where the provider offers it; best effort (a logout
        goes on whatever the answer). True when the provider confirmed it."""
        try:
            meta = await self.metadata()
            if not meta.revocation_endpoint:
                return False
            _token_endpoint, form, auth = await self._client_auth(
                {"token": refresh_token, "token_type_hint": "refresh_token"},
                self.settings.client_id,
                self.settings.client_secret,
            )
            response = await self.http.post(
                meta.revocation_endpoint, data=form, auth=auth or httpx.USE_CLIENT_DEFAULT
            )
        except (IdentityProviderError, httpx.HTTPError) as exc:
            logger.info("refresh token not revoked: %s", exc)
            return False
        # RFC 7009 2.2: 200 whether or not the token was valid.
        return response.status_code == 200

    async def logout_url(self, id_token: str | None, return_to: str) -> str:
        try:
            meta = await self.metadata()
        except IdentityProviderError:
            # The IdP is down: the local session is gone anyway, so go home.
            return return_to
        if meta.end_session_endpoint:
            # OIDC RP-Initiated Logout 1.0, section 2.
            params = {"post_logout_redirect_uri": return_to, "client_id": self.settings.client_id}
            if id_token:
                params["id_token_hint"] = id_token
            return _with_query(meta.end_session_endpoint, params)
        if _looks_like_auth0(meta.issuer):
            return _with_query(
                f"{self.settings.domain}/v2/logout",
                {"client_id": self.settings.client_id, "returnTo": return_to},
            )
        if not self._told_local_logout:
            self._told_local_logout = True
            logger.warning(
                "the provider publishes no end_session_endpoint: logout ends this app's "
                "session only, and the provider's own signs the user straight back in"
            )
        return return_to


def _with_query(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{urlencode(params)}"


def _looks_like_auth0(issuer: str) -> bool:
    # Auth0 issuers are "https://{domain}/"; its /v2/logout exists on custom domains too,
    # so any issuer that is a bare origin with a trailing slash gets the Auth0 fallback.
    parts = urlsplit(issuer)
    return parts.path == "/"
