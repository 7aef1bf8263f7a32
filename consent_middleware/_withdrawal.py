"""Withdrawal: the page and the form that take a consent back, as easily as it was given.

In ``revoke`` mode the session goes on, refreshed so its claim sends it to the terms page;
in ``flag`` and ``delete`` the account may no longer sign in, and both sessions end (the
app's and the provider's). Never held back on a doubt, never refused however often: a
repeat within a minute is folded into the withdrawal just recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ._consent import ConsentRoutes
from ._events import CollectionMethod, ConsentAction
from ._exceptions import LedgerError, ManagementAPIError
from ._models import Consent
from ._record import stored_consent
from ._refresh import with_cookies
from ._session import Session, now_ms
from ._transactions import Expectation

logger = logging.getLogger("consent_middleware")


@dataclass
class WithdrawalRoutes:
    consent: ConsentRoutes

    def routes(self) -> list[Route]:
        path = self.consent.settings.consent_path
        return [
            Route(f"{path}/withdraw", self.withdraw_page, methods=["GET"]),
            Route(f"{path}/withdraw", self.withdraw, methods=["POST"]),
        ]

    async def withdraw_page(self, request: Request) -> Response:
        session = await self.consent.session_or_login(request)
        if isinstance(session, Response):
            return session
        return self._withdraw_page(session)

    def _withdraw_page(
        self, session: Session, status_code: int = 200, error: str | None = None
    ) -> Response:
        settings = self.consent.settings
        return self.consent.pages.render(
            "withdraw.html",
            status_code,
            settings=settings,
            user=session.user,
            # What this session's claim says was accepted, never the current version.
            consent=Consent.from_claim(session.user.get(settings.consent_claim)),
            csrf_token=self.consent.csrf.token(session),
            mode=settings.withdraw_mode,
            error=error,
            home_url=self.consent.pages.home_url,
            # Read only when the session has ended before the form is sent: signing in
            # again comes back to this page, not to the home page.
            return_to=self.consent.pages.path(f"{settings.consent_path}/withdraw"),
        )

    async def withdraw(self, request: Request) -> Response:
        posted = await self.consent.posted(request)
        if isinstance(posted, Response):
            return posted
        session, _ = posted
        settings = self.consent.settings
        sub = str(session.user["sub"])
        withdrawn = f"withdrawn:{sub}"
        async with self.consent.state.lock(f"consent:{sub}"):
            # Never refused, however often: a repeat within a minute of a recorded
            # withdrawal (and no other choice since) is folded into it, not written again.
            written_ms = await self.consent.folded(sub, withdrawn)
            if written_ms is None and not await self._anything_to_withdraw(session):
                # Nothing given, by the claim nor by the record: no "withdrawn" event for a
                # consent that never was. The terms page, as after a withdrawal.
                return RedirectResponse(self._terms_page(), status_code=303)
            if written_ms is None:
                try:
                    await self._record_withdrawal(session)
                except (ManagementAPIError, LedgerError) as exc:
                    logger.warning("withdrawal failed: %s", exc)
                    # In delete mode the record may be written and the deletion not done
                    # yet: a retry repeats both, so the message does not claim nothing
                    # changed.
                    return await self.consent.gone(request, exc) or self._withdraw_page(
                        session,
                        503,
                        "We could not complete your withdrawal just now. "
                        "Please try again in a moment.",
                    )
                written_ms = await self.consent.recorded(sub, withdrawn)
            if settings.withdraw_mode == "revoke":
                return await self.consent.continued(
                    request, session, self._terms_page(), Expectation.WITHDRAWAL, written_ms
                )
        # flag and delete: the account may no longer sign in; end both sessions.
        url = await self.consent.oidc.logout_url(
            session.token_set.id_token, self.consent.pages.home_url
        )
        response = RedirectResponse(url, status_code=303)
        return with_cookies(response, await self.consent.sessions.clear(request.cookies))

    def _terms_page(self) -> str:  # where a withdrawal leaves the user
        home = self.consent.pages.path("/")
        return self.consent.pages.url(
            f"{self.consent.settings.consent_path}?{urlencode({'returnTo': home})}"
        )

    async def _anything_to_withdraw(self, session: Session) -> bool:
        """Whether the terms or a purpose stand given: by the session's claim, or (when it
        says nothing is, and may be older than a choice made elsewhere) by the record.
        Where the mode closes the account, or the record cannot be read, the withdrawal
        goes ahead: it is never held back on a doubt."""
        settings = self.consent.settings
        if settings.withdraw_mode != "revoke" or self._gives_any(
            session.user.get(settings.consent_claim)
        ):
            return True
        try:
            user = await self.consent.management.get_user(str(session.user["sub"]))
        except ManagementAPIError:
            return True
        return self._gives_any(stored_consent(user))  # the claim's shape, as the Action copies

    def _gives_any(self, claim: object) -> bool:
        consent = Consent.from_claim(claim)
        return consent is not None and bool(
            consent.given or consent.given_purposes(self.consent.settings.purposes)
        )

    async def _record_withdrawal(self, session: Session) -> None:
        settings = self.consent.settings
        mode = settings.withdraw_mode
        sub = str(session.user["sub"])
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        # Withdrawing the terms withdraws every optional purpose with them.
        given = sorted(consent.given_purposes(settings.purposes)) if consent else []
        at = now_ms()
        event = self.consent.writer.terms_event(
            ConsentAction.WITHDRAWN,
            CollectionMethod.WITHDRAW_PAGE,
            at,
            self.consent.writer.choices([], given, at),
        )
        extra = {"deleted": True} if mode == "flag" else None
        # The withdrawal is written first in every mode, so the record (and the tenant's
        # logs, and the ledger) show it even when the account is deleted right after.
        try:
            await self.consent.writer.write(sub, event, extra)
        except ManagementAPIError as exc:
            # An earlier attempt deleted the user but its answer was lost: go on.
            if not (mode == "delete" and exc.status_code == 404):
                raise
        if mode == "delete":
            try:
                await self.consent.management.delete_user(sub)
            except ManagementAPIError as exc:
                # Deleted already (an earlier attempt whose answer was lost): done.
                if exc.status_code != 404:
                    raise
