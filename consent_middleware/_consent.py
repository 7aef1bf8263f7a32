"""The consent routes: the terms page, accept, and withdrawal."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ._csrf import CSRF
from ._engine import Engine, append_cookies
from ._exceptions import ManagementAPIError
from ._models import Consent
from ._redirects import return_to_or_home
from ._refresh import EXPECT_CONSENT, EXPECT_WITHDRAWAL, SessionRefresher
from ._session import Session

logger = logging.getLogger("consent_middleware")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def terms_statement(engine: Engine) -> str:
    """The exact text the user agrees to; its SHA-256 goes into the record."""
    settings = engine.settings
    return settings.terms_text or (
        f"I have read and accept version {settings.terms_version} of the terms "
        f"published at {settings.terms_url}."
    )


def consent_record(engine: Engine) -> dict[str, Any]:
    settings = engine.settings
    statement = terms_statement(engine)
    return {
        "given": True,
        "version": settings.terms_version,
        "date": utc_now(),
        "text_details": settings.terms_url,
        "text_sha256": hashlib.sha256(statement.encode("utf-8")).hexdigest(),
    }


def withdrawal_record(engine: Engine) -> dict[str, Any]:
    return {
        "given": False,
        "version": engine.settings.terms_version,
        "date": utc_now(),
        "withdrawn": True,
    }


class ConsentRoutes:
    def __init__(self, engine: Engine, refresher: SessionRefresher) -> None:
        self.engine = engine
        self.refresher = refresher
        self.csrf = CSRF(engine.settings.secret, engine.settings.app_base_url)

    def routes(self) -> list[Route]:
        path = self.engine.settings.consent_path
        return [
            Route(path, self.terms, methods=["GET"]),
            Route(path, self.accept, methods=["POST"]),
            Route(f"{path}/withdraw", self.withdraw_page, methods=["GET"]),
            Route(f"{path}/withdraw", self.withdraw, methods=["POST"]),
        ]

    def _return_to(self, value: object) -> str:
        return return_to_or_home(
            value if isinstance(value, str) else None, self.engine.settings.app_base_url
        )

    async def _session_or_login(self, request: Request) -> Session | Response:
        session = self.engine.sessions.load(request.cookies)
        if session is not None:
            return session
        if request.method == "GET":
            query = f"?{request.url.query}" if request.url.query else ""
            return await self.engine.start_login(self.engine.url(request.url.path + query))
        return self.engine.error_page(
            "Session expired",
            "Your session ended before the form was sent. Please sign in and try again.",
            401,
            action_url=self.engine.url(f"{self.engine.settings.routes_prefix}/login"),
            action_label="Sign in",
        )

    def _page(
        self, session: Session, return_to: str, status_code: int = 200, error: str | None = None
    ) -> Response:
        engine = self.engine
        settings = engine.settings
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        return engine.templates.render(
            "consent.html",
            status_code,
            settings=settings,
            consent=consent,
            return_to=return_to,
            user=session.user,
            statement=terms_statement(engine),
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
        return self.engine.error_page(
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
        settings = self.engine.settings
        if form.get("version") != settings.terms_version:
            return self._page(
                session,
                return_to,
                409,
                "The terms changed while this page was open. Please review them again.",
            )
        if form.get("agree") != "yes":
            return self._page(session, return_to, 400, "Tick the box to accept the terms.")
        try:
            await self.engine.management.update_user(
                session.user["sub"], {"user_metadata": {"consent": consent_record(self.engine)}}
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
        return await self.refresher.refresh_and_continue(
            request, session, return_to, EXPECT_CONSENT
        )

    async def withdraw_page(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        settings = self.engine.settings
        return self.engine.templates.render(
            "withdraw.html",
            settings=settings,
            user=session.user,
            csrf_token=self.csrf.token(session),
            mode=settings.withdraw_mode,
            error=None,
            home_url=self.engine.home_url,
        )

    async def withdraw(self, request: Request) -> Response:
        session = await self._session_or_login(request)
        if isinstance(session, Response):
            return session
        form = await self._form(request)
        if form is None or not self.csrf.check(request, session, form.get("csrf_token")):
            return self._forged()
        engine = self.engine
        settings = engine.settings
        sub = session.user["sub"]
        body: dict[str, Any] = {"user_metadata": {"consent": withdrawal_record(engine)}}
        if settings.withdraw_mode == "flag":
            body["app_metadata"] = {"deleted": True}
        try:
            # The withdrawal is written first in every mode, so the tenant's logs show it
            # even when the account is deleted right after.
            try:
                await engine.management.update_user(sub, body)
            except ManagementAPIError as exc:
                # An earlier attempt deleted the user but its answer was lost: go on.
                if not (settings.withdraw_mode == "delete" and exc.status_code == 404):
                    raise
            if settings.withdraw_mode == "delete":
                await engine.management.delete_user(sub)
        except ManagementAPIError as exc:
            logger.warning("withdrawal failed: %s", exc)
            return engine.templates.render(
                "withdraw.html",
                503,
                settings=settings,
                user=session.user,
                csrf_token=self.csrf.token(session),
                mode=settings.withdraw_mode,
                home_url=engine.home_url,
                # In delete mode the record may be written and the deletion not done yet:
                # a retry repeats both, so the message does not claim nothing changed.
                error="We could not complete your withdrawal just now. "
                "Please try again in a moment.",
            )
        if settings.withdraw_mode == "revoke":
            terms = engine.url(f"{settings.consent_path}?{urlencode({'returnTo': '/'})}")
            return await self.refresher.refresh_and_continue(
                request, session, terms, EXPECT_WITHDRAWAL
            )
        # flag and delete: the account may no longer sign in; end both sessions.
        url = await engine.oidc.logout_url(session.token_set.id_token, engine.home_url)
        response = RedirectResponse(url, status_code=303)
        return append_cookies(response, engine.sessions.clear(request.cookies))
