"""Starting a login: a fresh transaction cookie and a redirect to the provider."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import RedirectResponse, Response

from ._exceptions import IdentityProviderError
from ._oidc import OIDCClient
from ._pages import Pages
from ._transactions import Expectation, Purpose, TransactionStore


class Login:
    def __init__(self, oidc: OIDCClient, transactions: TransactionStore, pages: Pages) -> None:
        self.oidc = oidc
        self.transactions = transactions
        self.pages = pages

    async def redirect(
        self,
        return_to: str,
        *,
        cookies: Mapping[str, str],
        extra: Mapping[str, str] | None = None,
        purpose: Purpose = Purpose.LOGIN,
        expect: Expectation | None = None,
    ) -> Response:
        """A redirect to the provider's /authorize, with the transaction's cookies.

        ``cookies`` are the request's: they hold the browser's binding, which this login
        shares with the others it has in flight, and those transactions, the oldest of
        which make room for this one.
        """
        tx, set_cookies = self.transactions.begin(return_to, cookies, purpose, expect)
        try:
            url = await self.oidc.authorization_url(
                state=tx.state,
                nonce=tx.nonce,
                code_verifier=tx.code_verifier,
                extra=extra,
                # OIDC Core 3.1.2.1: prompt=none asks the provider not to show any page.
                prompt="none" if purpose is Purpose.SILENT else None,
            )
        except IdentityProviderError as exc:
            # Its "Try again" starts this login again, to the same place.
            return self.pages.for_error(exc, return_to=return_to)
        response = RedirectResponse(url, status_code=302)
        for value in set_cookies:
            response.headers.append("set-cookie", value.decode("latin-1"))
        return response
