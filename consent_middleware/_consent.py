"""The consent routes: the terms page and accept (withdrawal is _withdrawal.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._config import Settings
from ._csrf import CSRF
from ._events import CollectionMethod, ConsentAction
from ._exceptions import LedgerError, ManagementAPIError, SharedStateError
from ._gate import app_path, requested_target, wants_json
from ._login import Login
from ._management import ManagementClient
from ._models import Consent
from ._oidc import OIDCClient
from ._pages import Pages
from ._record import ConsentWriter, not_saved, shown_sha256, terms_statement
from ._redirects import bounded_return_to, return_to_or_home
from ._refresh import SessionRefresher, with_cookies
from ._revocation import Revocations
from ._session import Session, SessionStore, now_ms
from ._state import SharedState
from ._transactions import Expectation

logger = logging.getLogger("consent_middleware")

# The Management API's errorCode for a user it does not have.
USER_GONE = "inexistent_user"

# The same choice repeated within this many seconds of a recorded one is not written again.
COALESCE_SECONDS = 60.0


async def best_effort(operation: Awaitable[object]) -> None:
    """Bookkeeping after a write the Management API accepted: the shared store being away
    must not turn a saved choice into an error page (the choice is what matters)."""
    try:
        await operation
    except SharedStateError as exc:
        logger.warning("shared store unavailable after a saved choice: %s", exc)


def shown_differs(form: FormData, digest: str) -> bool:
    """Whether the form's digest of what its page showed (``shown_sha256``) differs from
    what the page shows now. A form without one (a template of the app's own, written
    before the field) is let through with a warning: the version check still holds, and a
    409 it could never get past would lock every user out."""
    sent = form.get("shown")
    if sent is None:
        logger.warning(
            "a consent form without the 'shown' field: the record cannot prove which text "
            'the page showed; add <input type="hidden" name="shown" value="{{ shown }}">'
        )
        return False
    return sent != digest


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
    writer: ConsentWriter
    csrf: CSRF = field(init=False)

    def __post_init__(self) -> None:
        self.csrf = CSRF(self.settings.secret, self.settings.app_base_url)

    def routes(self) -> list[Route]:
        path = self.settings.consent_path
        return [
            Route(path, self.terms, methods=["GET"]),
            Route(path, self.accept, methods=["POST"]),
        ]

    def return_to(self, value: object) -> str:
        return return_to_or_home(
            value if isinstance(value, str) else None, self.settings.app_base_url
        )

    async def session_or_login(self, request: Request, as_json: bool = False) -> Session | Response:
        """The signed-in user's session, or the way to sign in: the login for a page, a
        JSON 401 for the receipt (``as_json``) or an API client."""
        # An ended session (logged out, deleted elsewhere) may not give or withdraw consent.
        loaded = await self.sessions.load(request.cookies)
        session = loaded and await self.refresher.settle(loaded)
        if session is not None:
            # The claim as the gate reads it: a session whose claims nextjs-auth0 filtered
            # is not asked to accept again.
            return await self.refresher.with_consent_claim(session)
        path = app_path(request.scope)
        if as_json or wants_json(path, request.headers, self.settings):
            return self.pages.json_error("login_required", 401, login_url=self.pages.login_url)
        if request.method in ("GET", "HEAD"):
            # Back to this very page: its address from the site's root, which holds the
            # mount's prefix however the server reports it (APP_BASE_URL ends in that
            # prefix too, so it is joined to the origin alone, never to APP_BASE_URL).
            back = bounded_return_to(requested_target(request.scope))
            return await self.login.redirect(self.return_to(back), cookies=request.cookies)
        # Back, after signing in, to where the form would have led (the terms page's
        # return_to: the deep link first asked for), not to the home page.
        form = await self._form(request)
        back = self.return_to(form.get("return_to") if form is not None else None)
        return self.pages.sign_in_again(
            "Session expired",
            "Your session ended before the form was sent. Please sign in and try again.",
            401,
            "Sign in",
            f"{self.pages.login_url}?{urlencode({'returnTo': back})}",
        )

    def _page(
        self, session: Session, return_to: str, status_code: int = 200, error: str | None = None
    ) -> Response:
        settings = self.settings
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        given = consent.given_purposes(settings.purposes) if consent else frozenset()
        # Offered unticked (GDPR recital 32); one already given is kept, not asked again.
        offered = [p for p in settings.purposes if p.id not in given]
        return self.pages.render(
            "consent.html",
            status_code,
            settings=settings,
            consent=consent,
            return_to=return_to,
            user=session.user,
            statement=terms_statement(settings),
            purposes=offered,
            shown=shown_sha256(offered, terms_statement(settings)),
            csrf_token=self.csrf.token(session),
            error=error,
            accepted=consent is not None and consent.covers(settings.terms_version),
            logout_url=self.pages.path(f"{settings.routes_prefix}/logout"),
            withdraw_url=self.pages.path(f"{settings.consent_path}/withdraw"),
        )

    async def posted(self, request: Request) -> tuple[Session, FormData] | Response:
        """A state-changing form's session and fields, or the answer instead: the login
        when the session ended, a 403 page when the form is not this site's (CSRF)."""
        session = await self.session_or_login(request)
        if isinstance(session, Response):
            return session
        form = await self._form(request)
        if form is None or not self.csrf.check(request, session, form.get("csrf_token")):
            return self.refused_form(request, form)
        return session, form

    async def _form(self, request: Request) -> FormData | None:
        try:
            return await request.form()
        except Exception:  # any unparsable body is the client's mistake, never a 500
            return None

    async def gone(
        self,
        request: Request,
        exc: Exception,
        as_json: bool = False,
        return_to: str | None = None,
    ) -> Response | None:
        """For a user the provider no longer has (deleted in the dashboard, say), the
        sign-out a retry could never get past; None otherwise. Only Auth0's own word for
        it counts (``inexistent_user``): a 404 from a wrong API address or a gateway says
        nothing of the user, and would sign everyone out. Its "Sign in" comes back to
        ``return_to``, when given."""
        if not (isinstance(exc, ManagementAPIError) and exc.error_code == USER_GONE):
            return None
        response = (
            self.pages.json_error("login_required", 401, login_url=self.pages.login_url)
            if as_json
            else self.pages.sign_in_again(
                "Account not found",
                "This account no longer exists at the identity provider, so nothing could "
                "be saved. You have been signed out.",
                401,
                "Sign in",
                self.pages.login_to(return_to),
            )
        )
        return with_cookies(response, await self.sessions.clear(request.cookies))

    def refused_form(self, request: Request, form: FormData | None) -> Response:
        """A 403, nothing changed. A form this site's page sent with another session's
        token (opened before the latest sign-in, in another tab) is told so, with the way
        back to its page; any other is refused plainly."""
        token = form.get("csrf_token") if form is not None else None
        if form is None or not isinstance(token, str) or not self.csrf.same_origin(request):
            return self.pages.error(
                "Request refused",
                "This form did not come from this site's own page, so nothing was changed. "
                "If you did mean to send it, open the page again and retry.",
                403,
            )
        return_to = form.get("return_to")
        if form.get("method") == CollectionMethod.HISTORY_PAGE.value:
            again = self.return_to(return_to)  # the history page the toggle was on
        else:
            # The page at this form's own path; a purposes page, for the purposes it asked.
            again = self.pages.path(app_path(request.scope))
            query = [("need", p) for p in form.getlist("purpose") if isinstance(p, str)]
            if isinstance(return_to, str):
                query.append(("returnTo", self.return_to(return_to)))
            again += "?" + urlencode(query) if query else ""
        return self.pages.error(
            "Page out of date",
            "This page was opened before your latest sign-in, so nothing was changed. "
            "Open it again to send it.",
            403,
            action_url=again,
            action_label="Open the page again",
        )

    async def terms(self, request: Request) -> Response:
        session = await self.session_or_login(request)
        if isinstance(session, Response):
            return session
        return self._page(session, self.return_to(request.query_params.get("returnTo")))

    async def accept(self, request: Request) -> Response:
        posted = await self.posted(request)
        if isinstance(posted, Response):
            return posted
        session, form = posted
        return_to = self.return_to(form.get("return_to"))
        settings = self.settings
        # The purposes the page showed: ticked ones are given, the others declined (a
        # purpose given before and not shown again is left as it is).
        offered = str(form.get("offered", "")).split()
        shown = [p for p in settings.purposes if p.id in offered]
        if form.get("version") != settings.terms_version or shown_differs(
            form, shown_sha256(shown, terms_statement(settings))
        ):
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
        ticked = sorted(p.id for p in shown if form.get(f"purpose_{p.id}") == "yes")
        unticked = sorted({p.id for p in shown}.difference(ticked))
        accepted = f"accepted:{sub}:{settings.terms_version}:{'+'.join(ticked)}"
        async with self.state.lock(f"consent:{sub}"):
            # The same accept again (a second tab, a double click) is folded into the
            # first: its grant, sent after the write, serves this request too.
            written_ms = await self.folded(sub, accepted)
            if written_ms is None:
                at = now_ms()
                choices = self.writer.choices(ticked, unticked, at)
                event = self.writer.terms_event(
                    ConsentAction.GIVEN, CollectionMethod.TERMS_PAGE, at, choices
                )
                try:
                    await self.writer.write(sub, event)
                except (ManagementAPIError, LedgerError) as exc:
                    logger.warning("saving consent failed: %s", exc)
                    return await self.gone(request, exc, return_to=return_to) or self._page(
                        session, return_to, 503, not_saved(exc, "consent")
                    )
                written_ms = await self.recorded(sub, accepted)
            return await self.continued(
                request, session, return_to, Expectation.CONSENT, written_ms
            )

    async def continued(
        self,
        request: Request,
        session: Session,
        return_to: str,
        expect: Expectation,
        written_ms: int,
    ) -> Response:
        """After a saved choice: the session refreshed to show it, then ``return_to``. A
        shared store that went away meanwhile (the grant takes its lock) undoes nothing:
        the page says the choice is saved, and the session catches up on a later visit
        (this worker already honours a withdrawal's mark)."""
        try:
            return await self.refresher.refresh_and_continue(
                request, session, return_to, expect, not_before=written_ms / 1000
            )
        except SharedStateError as exc:
            logger.warning("shared store unavailable after a saved choice: %s", exc)
            response = self.pages.error(
                "Your choice is saved",
                "Your choice is saved, but the site could not bring your session up to date "
                "just now. It will on your next visit; please try again in a moment.",
                503,
            )
            response.headers["Retry-After"] = "5"
            return response

    async def folded(self, sub: str, flag: str) -> int | None:
        """When the same choice (``flag``) was this user's last recorded one, less than a
        minute ago, its time: a second tab or a double click is folded into it, and the
        grant sent after it serves this request too. Any other choice since (another
        purpose, the terms withdrawn) makes this one a new choice, written again."""
        written_ms = await self.state.get_flag(flag)
        if written_ms is None or written_ms != await self.state.get_flag(f"last:{sub}"):
            return None
        return written_ms

    async def recorded(self, sub: str, flag: str) -> int:
        """The bookkeeping once Auth0 holds a choice; returns the time (UTC ms) the grant
        that follows must be sent after. ``flag`` names the choice (see ``folded``), and
        the user's other sessions are marked: they still show the old record, and are
        refreshed (or ended, when the account is gone) on their next request."""
        written_ms = now_ms()
        await best_effort(self.state.put_flag(flag, written_ms, COALESCE_SECONDS))
        await best_effort(self.state.put_flag(f"last:{sub}", written_ms, COALESCE_SECONDS))
        await best_effort(self.revocations.mark_user(sub))
        return written_ms
