"""The user's own view of their choices: optional purposes given or withdrawn one by one, the
history of every choice, and a consent receipt to download.

``GET /consent/purposes?need=a+b`` asks for the purposes a path needs (not the full terms);
``POST /consent/purposes`` gives or withdraws purposes, each choice an event of its own;
``GET /consent/history`` lists what was given and withdrawn, when, with per-purpose buttons
as easy to use as the ones that gave them (GDPR Art. 7(3)); ``GET /consent/receipt.json`` is
the record as a receipt after ISO/IEC TS 27560 and the Kantara consent receipt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ._consent import ConsentRoutes, shown_differs
from ._events import CollectionMethod, ConsentAction, ConsentEvent
from ._exceptions import LedgerError, ManagementAPIError
from ._models import Consent
from ._purposes import Purpose, purpose_by_id
from ._record import (
    history_of,
    not_saved,
    shown_sha256,
    state_of,
    stored_consent,
    terms_address,
)
from ._session import Session, now_ms
from ._transactions import Expectation

logger = logging.getLogger("consent_middleware")

RECEIPT_VERSION = "consent_middleware-receipt/1"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class ChoiceRoutes:
    consent: ConsentRoutes

    def routes(self) -> list[Route]:
        path = self.consent.settings.consent_path
        return [
            Route(f"{path}/purposes", self.purposes_page, methods=["GET"]),
            Route(f"{path}/purposes", self.choose, methods=["POST"]),
            Route(f"{path}/history", self.history, methods=["GET"]),
            Route(f"{path}/receipt.json", self.receipt, methods=["GET"]),
        ]

    def json_paths(self) -> frozenset[str]:
        """The routes that answer JSON, whoever asks (their errors too)."""
        return frozenset({f"{self.consent.settings.consent_path}/receipt.json"})

    def _purposes(self, raw: str) -> list[Purpose] | None:
        """The declared purposes named in ``a+b`` (or a form's list); None for an unknown one."""
        found = []
        for name in (part for part in raw.replace(" ", "+").split("+") if part):
            purpose = purpose_by_id(self.consent.settings.purposes, name)
            if purpose is None:
                return None
            if purpose not in found:  # named twice, asked (and recorded) once
                found.append(purpose)
        return found

    def _unknown(self) -> Response:
        return self.consent.pages.error(
            "Unknown purpose", "This page asked about a purpose this site does not use.", 400
        )

    def _given(self, session: Session) -> frozenset[str]:
        settings = self.consent.settings
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        return consent.given_purposes(settings.purposes) if consent else frozenset()

    async def _terms_first(self, session: Session, return_to: str) -> Response | None:
        """The terms page when the terms themselves are not accepted: purposes come after."""
        settings = self.consent.settings
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        if consent is not None and consent.covers(settings.terms_version):
            return None
        query = f"?{urlencode({'returnTo': return_to})}" if return_to else ""
        return RedirectResponse(self.consent.pages.url(settings.consent_path + query), 303)

    async def purposes_page(self, request: Request) -> Response:
        session = await self.consent.session_or_login(request)
        if isinstance(session, Response):
            return session
        # Every ``need`` counts (``?need=a&need=b`` as ``?need=a+b``), and an empty one names
        # nothing: the page never says "already allowed" of a purpose it did not look at.
        needed = self._purposes("+".join(request.query_params.getlist("need")))
        if needed is None:
            return self._unknown()
        return_to = self.consent.return_to(request.query_params.get("returnTo"))
        early = await self._terms_first(session, request.query_params.get("returnTo", ""))
        if early is not None:
            return early
        given = self._given(session)
        asked = [p for p in needed if p.id not in given]
        return self._purposes_view(session, asked, return_to, named=bool(needed))

    def _purposes_view(
        self,
        session: Session,
        asked: list[Purpose],
        return_to: str,
        status_code: int = 200,
        error: str | None = None,
        *,
        named: bool = True,
    ) -> Response:
        """The purposes ``asked`` for; with none left to ask, a page that says why: all
        those named are allowed already, or (``named`` false) the link named none."""
        consent = self.consent
        return consent.pages.render(
            "purposes.html",
            status_code,
            settings=consent.settings,
            user=session.user,
            purposes=asked,
            named=named,
            shown=shown_sha256(asked),
            return_to=return_to,
            csrf_token=consent.csrf.token(session),
            error=error,
            history_url=consent.pages.path(f"{consent.settings.consent_path}/history"),
            home_url=consent.pages.home_url,
        )

    async def choose(self, request: Request) -> Response:
        """Give (``action=give``) or withdraw (``action=withdraw``) the purposes named in
        ``purpose`` fields: one event, then the session refreshed to show it."""
        consent, settings = self.consent, self.consent.settings
        posted = await consent.posted(request)
        if isinstance(posted, Response):
            return posted
        session, form = posted
        return_to = consent.return_to(form.get("return_to"))
        chosen = self._purposes("+".join(str(v) for v in form.getlist("purpose")))
        action_name = form.get("action")
        if chosen is None or action_name not in ("give", "withdraw"):
            return self._unknown()
        if not chosen:
            return RedirectResponse(return_to, status_code=303)
        early = await self._terms_first(session, "")
        if early is not None:
            return early
        action = ConsentAction.GIVEN if action_name == "give" else ConsentAction.WITHDRAWN
        if action is ConsentAction.GIVEN and shown_differs(form, shown_sha256(chosen)):
            # Given only for the text its page showed (a withdrawal needs no such proof).
            message = "These choices changed while this page was open. Please review them again."
            return self._purposes_view(session, chosen, return_to, 409, message)
        sub = str(session.user["sub"])
        # Giving spends Management API writes and grants against tenant-wide limits, so it
        # is throttled like an accept; withdrawing never is (GDPR Art. 7(3): as easy as giving).
        count, reset_in = (0, 0.0)
        if action is ConsentAction.GIVEN:
            count, reset_in = await consent.state.incr(f"accepts:{sub}", 60)
        if count > settings.accepts_per_minute:
            response = self._purposes_view(
                session, chosen, return_to, 429, "Too many changes in a minute: please wait."
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(reset_in)))
            return response
        ids = sorted(p.id for p in chosen)
        flag = f"purposes:{sub}:{action.value}:{'+'.join(ids)}"
        async with consent.state.lock(f"consent:{sub}"):
            # The same choice again (a double click) is folded into the first.
            written_ms = await consent.folded(sub, flag)
            if written_ms is None:
                at = now_ms()
                # Where the choice was made, as the form says (only these two send it).
                method = (
                    CollectionMethod.HISTORY_PAGE
                    if form.get("method") == CollectionMethod.HISTORY_PAGE.value
                    else CollectionMethod.PURPOSE_PAGE
                )
                event = consent.writer.purposes_event(action, method, at, ids)
                try:
                    await consent.writer.write(sub, event)
                except (ManagementAPIError, LedgerError) as exc:
                    message = not_saved(exc, "choice")
                    gone = await consent.gone(request, exc, return_to=return_to)
                    return gone or self._purposes_view(session, chosen, return_to, 503, message)
                written_ms = await consent.recorded(sub, flag)
            return await consent.continued(
                request, session, return_to, Expectation.CONSENT, written_ms
            )

    async def _session_and_record(
        self, request: Request, as_json: bool = False, page: str | None = None
    ) -> tuple[Session, dict[str, Any]] | Response:
        """The signed-in user's session and their record as Auth0 holds it (read on these
        pages only), or the answer instead: the login, or a 503 while Auth0 is away. A
        user gone from Auth0 who signs in again comes back to ``page``."""
        session = await self.consent.session_or_login(request, as_json)
        if isinstance(session, Response):
            return session
        try:
            user = await self.consent.management.get_user(str(session.user["sub"]))
        except ManagementAPIError as exc:
            logger.warning("reading the consent record failed: %s", exc)
            message = "Your consent record cannot be read just now. Nothing was changed."
            gone = await self.consent.gone(request, exc, as_json, page)
            return gone or self.consent.pages.unavailable(as_json, message)
        return session, dict(stored_consent(user))

    async def history(self, request: Request) -> Response:
        consent, settings = self.consent, self.consent.settings
        page = consent.pages.path(f"{settings.consent_path}/history")
        found = await self._session_and_record(request, page=page)
        if isinstance(found, Response):
            return found
        session, record = found
        events = history_of(record)
        given = self._given(session)
        return consent.pages.render(
            "history.html",
            settings=settings,
            user=session.user,
            events=[(_when(e.date), e) for e in reversed(events)],
            purposes=[(p, p.id in given) for p in settings.purposes],
            # Each purpose's "allow" form carries what it showed (an app's own template of
            # this page, written before, still unpacks the pairs above).
            shown={p.id: shown_sha256([p]) for p in settings.purposes},
            state=state_of(record),
            csrf_token=consent.csrf.token(session),
            return_to=page,
            withdraw_url=consent.pages.path(f"{settings.consent_path}/withdraw"),
            receipt_url=consent.pages.path(f"{settings.consent_path}/receipt.json"),
            home_url=consent.pages.home_url,
        )

    async def receipt(self, request: Request) -> Response:
        found = await self._session_and_record(request, as_json=True)
        if isinstance(found, Response):
            return found
        session, record = found
        body = receipt(self.consent, str(session.user["sub"]), record)
        headers = {
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="consent-receipt.json"',
        }
        return JSONResponse(body, headers=headers)


def receipt(consent: ConsentRoutes, sub: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as a consent receipt (fields after ISO/IEC TS 27560 and the Kantara
    Consent Receipt 1.1): who collected it, from whom, for what, under which text, how."""
    settings = consent.settings
    events = history_of(record)
    last: ConsentEvent | None = events[-1] if events else None
    state = state_of(record)
    stored = state.get("purposes")
    stored_purposes = stored if isinstance(stored, dict) else {}
    current = Consent.from_claim(state)
    given = current.given_purposes(settings.purposes) if current else frozenset()
    # The same record gives the same receipt id: a receipt names a state, not a download.
    digest = hashlib.sha256(f"{sub}\n{last.as_record() if last else ''}".encode()).digest()
    return {
        "receipt_version": RECEIPT_VERSION,
        "receipt_id": str(uuid.UUID(bytes=digest[:16])),
        "timestamp": int(time.time() * 1000),
        "controller": {"name": settings.controller or settings.app_base_url,
                       "url": settings.app_base_url},
        "principal_id": sub,
        "policy_url": terms_address(settings),
        "terms": {
            "version": state.get("version"),
            "given": state.get("given") is True and state.get("withdrawn") is not True,
            "date": state.get("date"),
            "text_sha256": state.get("text_sha256"),
        },
        "purposes": [
            {
                "id": purpose.id,
                "title": purpose.title,
                "version": purpose.version,
                # Given only for the current version of its text.
                "given": purpose.id in given,
                "choice": stored_purposes.get(purpose.id),
            }
            for purpose in settings.purposes
        ],
        "collection_method": last.method.value if last else None,
        "events": [event.as_record() for event in events],
    }  # fmt: skip
