"""The Auth0 Management API subset the consent flow needs, with bounded retries."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
from cachetools import TLRUCache

from ._config import Settings
from ._exceptions import IdentityProviderError, ManagementAPIError
from ._oidc import OIDCClient

logger = logging.getLogger("consent_middleware")

# Refresh the token this long before Auth0 says it expires, so no call races its expiry.
TOKEN_EXPIRY_MARGIN = 60
MAX_ATTEMPTS = 4
# The longest a user waits on one save, all retries and Retry-After pauses included.
MAX_TOTAL_WAIT = 8.0
BACKOFF_BASE = 0.25

Sleep = Callable[[float], Awaitable[None]]


def _token_ttu(_key: str, value: tuple[str, float], now: float) -> float:
    return now + value[1]


class ManagementClient:
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
        self.sleep = sleep
        self.max_total_wait = max_total_wait
        # One entry: (access token, seconds it stays usable); expires per the token's own life.
        self._token: TLRUCache[str, tuple[str, float]] = TLRUCache(
            maxsize=1, ttu=_token_ttu, timer=time.monotonic
        )
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0

    async def get_user(self, user_id: str) -> dict[str, Any]:
        return await self._api("GET", user_id)

    async def update_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: Auth0 merges root keys of user_metadata/app_metadata and replaces the rest."""
        return await self._api("PATCH", user_id, body)

    async def delete_user(self, user_id: str) -> None:
        await self._api("DELETE", user_id)

    async def access_token(self) -> str:
        cached = self._token.get("token")
        if cached is not None:
            return cached[0]
        # One fetch at a time: many accepts arriving together share a single token request.
        async with self._token_lock:
            cached = self._token.get("token")
            if cached is not None:
                return cached[0]
            token, lifetime = await self._fetch_token()
            self._token["token"] = (token, max(1.0, lifetime - TOKEN_EXPIRY_MARGIN))
            return token

    async def _fetch_token(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "audience": self.settings.management_audience}
        try:
            url, form, auth = await self.oidc.client_auth(
                form, self.settings.mgmt_client_id, self.settings.mgmt_client_secret
            )
        except IdentityProviderError as exc:
            raise ManagementAPIError(f"could not discover the token endpoint: {exc}") from None
        self.token_fetches += 1
        response = await self._send(
            lambda: self.oidc.http.post(
                url,
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            ),
            "token request",
        )
        body = _json(response)
        token = body.get("access_token")
        if not isinstance(token, str):
            raise ManagementAPIError("the token endpoint returned no Management API token")
        expires_in = body.get("expires_in", 86400)
        return token, float(expires_in) if isinstance(expires_in, int | float) else 86400.0

    async def _api(self, method: str, user_id: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.settings.domain}/api/v2/users/{quote(user_id, safe='')}"
        headers = {"Accept": "application/json"}

        def call() -> Awaitable[httpx.Response]:
            return self.oidc.http.request(method, url, json=body, headers=headers)

        for _ in range(2):
            headers["Authorization"] = f"Bearer {await self.access_token()}"
            response = await self._send(call, f"{method} user")
            if response.status_code != 401:
                break
            # The cached token was revoked or expired early: fetch a new one, once.
            self._token.pop("token", None)
        if response.status_code == 204:
            return {}
        if response.status_code >= 400:
            raise ManagementAPIError(
                f"{method} user answered HTTP {response.status_code}: {_message(response)}",
                response.status_code,
            )
        return _json(response)

    async def _send(
        self, call: Callable[[], Awaitable[httpx.Response]], what: str
    ) -> httpx.Response:
        """Retry 429 (as told by Retry-After / x-ratelimit-reset), 5xx and timeouts."""
        deadline = time.monotonic() + self.max_total_wait
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = await call()
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}"
                delay = BACKOFF_BASE * 2 ** (attempt - 1)
            else:
                if response.status_code == 429:
                    failure = "rate limited (429)"
                    delay = _retry_after(response) or BACKOFF_BASE * 2 ** (attempt - 1)
                elif response.status_code >= 500:
                    failure = f"HTTP {response.status_code}"
                    delay = BACKOFF_BASE * 2 ** (attempt - 1)
                else:
                    return response
            remaining = deadline - time.monotonic()
            if attempt == MAX_ATTEMPTS or delay > remaining:
                raise ManagementAPIError(f"Management API {what} failed: {failure}")
            logger.info("Management API %s: %s; retrying in %.2fs", what, failure, delay)
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
    except ValueError:
        raise ManagementAPIError("the Management API answered something that is not JSON") from None
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
