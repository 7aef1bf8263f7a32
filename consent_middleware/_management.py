"""The Auth0 Management API subset the consent flow needs, with bounded retries."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ._config import Settings
from ._exceptions import IdentityProviderError, ManagementAPIError, TokenEndpointError
from ._oidc import OIDCClient
from ._tokens import AccessToken

logger = logging.getLogger("consent_middleware")

# Refresh the token this long before Auth0 says it expires, so no call races its expiry.
TOKEN_EXPIRY_MARGIN = 60
MAX_ATTEMPTS = 4
# The longest a user waits on one save, all retries and Retry-After pauses included.
MAX_TOTAL_WAIT = 8.0
BACKOFF_BASE = 0.25

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class _Retryable(Exception):
    """One failed attempt worth another try: what failed, and how long the server asked to wait."""

    def __init__(self, failure: str, delay: float | None = None) -> None:
        self.failure = failure
        self.delay = delay
        super().__init__(failure)


class ManagementClient:
    """Auth0's Management API, with a token from the protocol layer's client-credentials grant."""

    def __init__(
        self,
        settings: Settings,
        oidc: OIDCClient,
        *,
        sleep: Sleep = asyncio.sleep,
        max_total_wait: float = MAX_TOTAL_WAIT,
    ) -> None:
        self.settings = settings
        self.oidc = oidc
        self.http = oidc.http
        self.sleep = sleep
        self.max_total_wait = max_total_wait
        # (token, monotonic deadline): the token is reused until shortly before it expires.
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0

    async def get_user(self, user_id: str) -> dict[str, Any]:
        return await self._api("GET", user_id)

    async def update_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: Auth0 merges root keys of user_metadata/app_metadata and replaces the rest."""
        return await self._api("PATCH", user_id, body)

    async def delete_user(self, user_id: str) -> None:
        await self._api("DELETE", user_id)

    def _cached_token(self) -> str | None:
        if self._token is not None and self._token[1] > time.monotonic():
            return self._token[0]
        return None

    async def access_token(self) -> str:
        token = self._cached_token()
        if token is not None:
            return token
        # One fetch at a time: many accepts arriving together share a single token request.
        async with self._token_lock:
            token = self._cached_token()
            if token is not None:
                return token
            self.token_fetches += 1
            granted = await self._with_retries(self._fetch_token, "token request")
            usable_for = max(1.0, granted.expires_in - TOKEN_EXPIRY_MARGIN)
            self._token = (granted.token, time.monotonic() + usable_for)
            return granted.token

    async def _fetch_token(self) -> AccessToken:
        settings = self.settings
        try:
            return await self.oidc.client_credentials_grant(
                client_id=settings.mgmt_client_id,
                client_secret=settings.mgmt_client_secret,
                audience=settings.management_audience,
            )
        except TokenEndpointError as exc:
            # Auth0's description is what tells the operator the fix ("You need to create
            # a client-grant ..." for a missing grant): kept, for the log.
            raise ManagementAPIError(
                f"the token endpoint refused the Management API token: {exc}", exc.status_code
            ) from exc
        except IdentityProviderError as exc:
            # Unreachable, a 5xx, rate limited (429), or discovery failing: all worth
            # another try.
            raise _Retryable(str(exc)) from exc

    async def _api(self, method: str, user_id: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.settings.domain}/api/v2/users/{quote(user_id, safe='')}"
        headers = {"Accept": "application/json"}

        async def call() -> httpx.Response:
            try:
                response = await self.http.request(method, url, json=body, headers=headers)
            except httpx.TransportError as exc:
                raise _Retryable(type(exc).__name__) from exc
            if response.status_code == 429:
                raise _Retryable("rate limited (429)", _retry_after(response))
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            return response

        for _ in range(2):
            headers["Authorization"] = f"Bearer {await self.access_token()}"
            response = await self._with_retries(call, f"{method} user")
            if response.status_code != 401:
                break
            # The cached token was revoked or expired early: fetch a new one, once.
            self._token = None
        if response.status_code == 204:
            return {}
        if response.status_code >= 400:
            raise ManagementAPIError(
                f"{method} user answered HTTP {response.status_code}: {_message(response)}",
                response.status_code,
                error_code=_error_code(response),
            )
        return _json(response)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry 429 (as told by Retry-After / x-ratelimit-reset), 5xx and timeouts."""
        deadline = time.monotonic() + self.max_total_wait
        for number in range(1, MAX_ATTEMPTS + 1):
            try:
                return await attempt()
            except _Retryable as exc:
                failure = exc
            delay = failure.delay or BACKOFF_BASE * 2 ** (number - 1)
            if number == MAX_ATTEMPTS or delay > deadline - time.monotonic():
                raise ManagementAPIError(
                    f"Management API {what} failed: {failure.failure}"
                ) from failure
            logger.info("Management API %s: %s; retrying in %.2fs", what, failure.failure, delay)
            await self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value:
        if value.strip().isdigit():
            return float(value)
        parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
        if parsed is not None:
            return max(0.0, parsed.timestamp() - time.time())
    reset = response.headers.get("x-ratelimit-reset")
    if reset and reset.strip().isdigit():
        return max(0.0, float(reset) - time.time())
    return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ManagementAPIError("the Management API answered something that is not JSON") from exc
    if not isinstance(body, dict):
        raise ManagementAPIError("the Management API answered something that is not an object")
    return body


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "no details"
    return (
        str(body.get("message") or body.get("error") or "no details")
        if isinstance(body, dict)
        else "no details"
    )


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("errorCode") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None
