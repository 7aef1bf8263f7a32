"""The parts every route shares, wired once per middleware instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ._config import Settings
from ._exceptions import IdentityProviderError
from ._management import ManagementClient
from ._oidc import OIDCClient
from ._session import CookieSessionStore, SessionStore, TransactionStore
from ._templates import Templates


@dataclass
class Engine:
    settings: Settings
    oidc: OIDCClient
    sessions: SessionStore
    transactions: TransactionStore
    templates: Templates
    management: ManagementClient

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        session_store: SessionStore | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> Engine:
        oidc = OIDCClient(settings, http_client)
        return cls(
            settings=settings,
            oidc=oidc,
            sessions=session_store or CookieSessionStore(settings),
            transactions=TransactionStore(settings),
            templates=Templates(settings.templates_directory),
            management=ManagementClient(settings, oidc),
        )

    @property
    def home_url(self) -> str:
        return f"{self.settings.app_base_url}/"

    def url(self, path: str) -> str:
        return f"{self.settings.app_base_url}{path}"

    def error_page(self, title: str, message: str, status_code: int, **context: Any) -> Response:
        return self.templates.error(title, message, status_code, home_url=self.home_url, **context)

    async def start_login(
        self,
        return_to: str,
        extra: dict[str, str] | None = None,
        purpose: str = "login",
        expect: str | None = None,
    ) -> Response:
        """Redirect to the provider's /authorize with a fresh transaction cookie."""
        tx = self.oidc.new_transaction(return_to, purpose, expect)
        try:
            url = await self.oidc.authorization_url(tx, extra or {})
        except IdentityProviderError as exc:
            return self.unreachable(exc)
        response = RedirectResponse(url, status_code=302)
        response.headers.append("set-cookie", self.transactions.save(tx).decode("latin-1"))
        return response

    def unreachable(self, exc: IdentityProviderError) -> Response:
        return self.error_page(
            "Sign-in service unavailable",
            f"The identity provider could not be reached or answered badly ({exc}). "
            "Please try again in a moment.",
            502,
        )


def append_cookies(response: Response, cookies: list[bytes]) -> Response:
    for value in cookies:
        response.headers.append("set-cookie", value.decode("latin-1"))
    return response


def query_dict(request: Request) -> dict[str, str]:
    return dict(request.query_params.items())
