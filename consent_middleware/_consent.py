"""The consent routes: the terms page, accept, and withdrawal."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ._config import Settings
from ._csrf import CSRF
from ._exceptions import ManagementAPIError, SharedStateError
from ._login import Login
from ._management import ManagementClient
from ._models import Consent
from ._oidc import OIDCClient
from ._pages import Pages
from ._redirects import return_to_or_home
from ._refresh import SessionRefresher, with_cookies
from ._revocation import Revocations
from ._session import Session, SessionStore, now_ms
from ._state import SharedState
from ._transactions import Expectation

logger = logging.getLogger("consent_middleware")

# The same choice repeated within this many seconds of a recorded one is not written again.
COALESCE_SECONDS = 60.0


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def terms_statement(settings: Settings) -> str:
    """The exact text the user agrees to; its SHA-256 goes into the record."""
    return settings.terms_text or (
        f"I have read and accept version {settings.terms_version} of the terms "
        f"published at {settings.terms_url}."
    )


def consent_record(settings: Settings) -> dict[str, Any]:
    statement = terms_statement(settings)
    return {
        "given": True,
        "version": settings.terms_version,
        "date": utc_now(),
        "text_details": settings.terms_url,
        "text_sha256": hashlib.sha256(statement.encode("utf-8")).hexdigest(),
    }


def withdrawal_record(settings: Settings) -> dict[str, Any]:
    return {
        "given": False,
        "version": settings.terms_version,
        "date": utc_now(),
        "withdrawn": True,
    }


async def _best_effort(operation: Awaitable[object]) -> None:
    """Bookkeeping after a write the Management API accepted: the shared store being away
    must not turn a saved choice into an error page (the choice is what matters)."""
    try:
        await operation
    except SharedStateError as exc:
        logger.warning("shared store unavailable after a saved choice: %s", exc)


@dataclass
class ConsentRoutes:
    settings: Settings
    oidc: OIDCClient
    sessions: SessionStore
    management: ManagementClient
    login: Login
    refresher: SessionRefresher
    revocations: Revocations
    state: SharedState
    pages: Pages
    csrf: CSRF = field(init=False)

    def __post_init__(self) -> None:
        self.csrf = CSRF(self.settings.secret, self.settings.app_base_url)

    def routes(self) -> list[Route]:
        path = self.settings.consent_path
        return [
            Route(path, self.terms, methods=["GET"]),
            Route(path, self.accept, methods=["POST"]),
            Route(f"{path}/withdraw", self.withdraw_page, methods=["GET"]),
            Route(f"{path}/withdraw", self.withdraw, methods=["POST"]),
        ]

    def _return_to(self, value: object) -> str:
        return return_to_or_home(
            value if isinstance(value, str) else None, self.settings.app_base_url
        )

    async def _session_or_login(self, request: Request) -> Session | Response:
        # An ended session (logged out, deleted elsewhere) may not give or withdraw consent.
        loaded = await self.sessions.load(request.cookies)
        session = loaded and await self.refresher.settle(loaded)
        if session is not None:
            return session
        if request.method in ("GET", "HEAD"):
            query = f"?{request.url.query}" if request.url.query else ""
            return await self.login.redirect(
                self.pages.url(request.url.path + query), cookies=request.cookies
            )
        return self.pages.sign_in_again(
            "Session expired",
            "Your session ended before the form was sent. Please sign in and try again.",
            401,
            "Sign in",
        )

    def _page(
        self, session: Session, return_to: str, status_code: int = 200, error: str | None = None
    ) -> Response:
        settings = self.settings
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        return self.pages.render(
            "consent.html",
            status_code,
            settings=settings,
            consent=consent,
            return_to=return_to,
            user=session.user,
            statement=terms_statement(settings),
            csrf_token=self.csrf.token(session),
            error=error,
            accepted=consent is not None and consent.covers(settings.terms_version),
            logout_url=f"{settings.routes_prefix}/logout",
            withdraw_url=f"{settings.consent_path}/withdraw",
        )

    async def _form(self, request: Request) -> FormData | None:
        try:
            return await request.form()
        except Exception:  # any unparsable body is the client's mistake, never a 500
            return None

    def _forged(self) -> Response:
        return self.pages.error(
            "Request refused",
            "This form did not come from this site's own page, so nothing was changed. "
            "If you did mean to send it, open the page again and retry.",
            403,
        )

    async def terms(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        return self._page(session, self._return_to(request.query_params.get("returnTo")))

    async def accept(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        form = await self._form(request)
        if form is None or not self.csrf.check(request, session, form.get("csrf_token")):
            return self._forged()
        return_to = self._return_to(form.get("return_to"))
        settings = self.settings
        if form.get("version") != settings.terms_version:
            return self._page(
                session,
                return_to,
                409,
                "The terms changed while this page was open. Please review them again.",
            )
        if form.get("agree") != "yes":
            return self._page(session, return_to, 400, "Tick the box to accept the terms.")
        sub = str(session.user["sub"])
        # Each accept is a Management API write and a grant, both against tenant-wide
        # rate limits: one user may not spend them for everyone.
        count, reset_in = await self.state.incr(f"accepts:{sub}", 60)
        if count > settings.accepts_per_minute:
            response = self._page(
                session,
                return_to,
                429,
                "You have accepted many times in the last minute. Please wait a moment "
                "and try again.",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(reset_in)))
            return response
        # Accept and withdrawal of one user run one at a time, and each ends with a grant
        # sent after its write: the last session issued matches the last record.
        accepted = f"accepted:{sub}:{settings.terms_version}"
        async with self.state.lock(f"consent:{sub}"):
            # The same accept again (a second tab, a double click) is folded into the
            # first: its grant, sent after the write, serves this request too.
            written_ms = await self.state.get_flag(accepted)
            if written_ms is None:
                try:
                    await self.management.update_user(
                        sub, {"user_metadata": {"consent": consent_record(settings)}}
                    )
                except ManagementAPIError as exc:
                    logger.warning("saving consent failed: %s", exc)
                    return self._page(
                        session,
                        return_to,
                        503,
                        "We could not save your consent just now, and nothing was "
                        "changed. Please try again in a moment.",
                    )
                written_ms = now_ms()
                await _best_effort(self.state.put_flag(accepted, written_ms, COALESCE_SECONDS))
                await _best_effort(self.state.drop_flag(f"withdrawn:{sub}"))
                # The user's other sessions still say "not given": refreshed on next use.
                await _best_effort(self.revocations.mark_user(sub))
            return await self.refresher.refresh_and_continue(
                request, session, return_to, Expectation.CONSENT, not_before=written_ms / 1000
            )

    async def withdraw_page(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        return self._withdraw_page(session)

    def _withdraw_page(
        self, session: Session, status_code: int = 200, error: str | None = None
    ) -> Response:
        settings = self.settings
        return self.pages.render(
            "withdraw.html",
            status_code,
            settings=settings,
            user=session.user,
            csrf_token=self.csrf.token(session),
            mode=settings.withdraw_mode,
            error=error,
            home_url=self.pages.home_url,
        )

    async def withdraw(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        form = await self._form(request)
        if form is None or not self.csrf.check(request, session, form.get("csrf_token")):
            return self._forged()
        settings = self.settings
        sub = str(session.user["sub"])
        withdrawn = f"withdrawn:{sub}"
        async with self.state.lock(f"consent:{sub}"):
            # Never refused, however often: a repeat within a minute of a recorded
            # withdrawal (and no accept since) is folded into it instead of written again.
            written_ms = await self.state.get_flag(withdrawn)
            if written_ms is None:
                try:
                    await self._record_withdrawal(sub)
                except ManagementAPIError as exc:
                    logger.warning("withdrawal failed: %s", exc)
                    # In delete mode the record may be written and the deletion not done
                    # yet: a retry repeats both, so the message does not claim nothing
                    # changed.
                    return self._withdraw_page(
                        session,
                        503,
                        "We could not complete your withdrawal just now. "
                        "Please try again in a moment.",
                    )
                written_ms = now_ms()
                await _best_effort(self.state.put_flag(withdrawn, written_ms, COALESCE_SECONDS))
                await _best_effort(self.state.drop_flag(f"accepted:{sub}:{settings.terms_version}"))
                # Processing stops everywhere: the user's other sessions are re-checked
                # (sent to the terms page, or ended when the account is gone) on next use.
                await _best_effort(self.revocations.mark_user(sub))
            if settings.withdraw_mode == "revoke":
                terms = self.pages.url(f"{settings.consent_path}?{urlencode({'returnTo': '/'})}")
                return await self.refresher.refresh_and_continue(
                    request, session, terms, Expectation.WITHDRAWAL, not_before=written_ms / 1000
                )
        # flag and delete: the account may no longer sign in; end both sessions.
        url = await self.oidc.logout_url(session.token_set.id_token, self.pages.home_url)
        response = RedirectResponse(url, status_code=303)
        return with_cookies(response, await self.sessions.clear(request.cookies))

    async def _record_withdrawal(self, sub: str) -> None:
        mode = self.settings.withdraw_mode
        body: dict[str, Any] = {"user_metadata": {"consent": withdrawal_record(self.settings)}}
        if mode == "flag":
            body["app_metadata"] = {"deleted": True}
        # The withdrawal is written first in every mode, so the tenant's logs show it even
        # when the account is deleted right after.
        try:
            await self.management.update_user(sub, body)
        except ManagementAPIError as exc:
            # An earlier attempt deleted the user but its answer was lost: go on.
            if not (mode == "delete" and exc.status_code == 404):
                raise
        if mode == "delete":
            await self.management.delete_user(sub)
