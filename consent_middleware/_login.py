"""Starting a login: a fresh transaction cookie and a redirect to the provider."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from ._exceptions import IdentityProviderError
from ._oidc import OIDCClient
from ._pages import Pages
from ._transactions import Expectation, Purpose, Transaction, TransactionStore


class Login:
    def __init__(self, oidc: OIDCClient, transactions: TransactionStore, pages: Pages) -> None:
        self.oidc = oidc
        self.transactions = transactions
        self.pages = pages

    async def redirect(
        self,
        return_to: str,
        *,
        extra: dict[str, str] | None = None,
        purpose: Purpose = Purpose.LOGIN,
        expect: Expectation | None = None,
    ) -> Response:
        """A redirect to the provider's /authorize, with the transaction's cookie."""
        tx = Transaction(return_to, purpose, expect)
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
            return self.pages.for_error(exc)
        response = RedirectResponse(url, status_code=302)
        response.headers.append("set-cookie", self.transactions.save(tx).decode("latin-1"))
        return response
