"""The consent record: where each choice is written, and in which order.

Auth0 holds the authoritative record in ``app_metadata.consent``, which a user cannot write
(an SPA token with ``update:current_user_metadata`` can PATCH ``user_metadata``, so a record
there proves nothing): the current state, which the post-login Action copies into the ID
token, plus ``history``, the last ``CONSENT_HISTORY_LIMIT`` events. ``user_metadata.consent``
mirrors the current state, as Auth0's GDPR guide shows it. The ledger, when configured,
keeps every event.

The Management API has no conditional update, so the caller serialises a user's writes
(the per-user lock) and each write is read, append, write: two tabs never lose an event.

Order of writes: ledger "pending" → Auth0 PATCH → ledger "confirmed", or "abandoned" when
Auth0 refused the write. A PATCH that got no answer (or a server error) may have been
applied all the same: the user is read back, and the event found in its history confirms
the row (the choice stands); not found (Auth0 may still apply it) or not readable, the row
stays pending and the user is told the outcome is not known. A ledger that is
down fails the choice before Auth0 is touched (the page says nothing changed, the user
tries again: no choice is lost), and the ledger never claims a consent Auth0 does not
have: a pending row with no confirmation is not a consent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ._config import Settings
from ._events import CollectionMethod, ConsentAction, ConsentEvent, PurposeChoice
from ._exceptions import LedgerError, ManagementAPIError
from ._management import ManagementClient
from ._purposes import Purpose

logger = logging.getLogger("consent_middleware")

# What the claim (and user_metadata) carries: the current state, never the history.
STATE_FIELDS = ("given", "version", "date", "text_sha256", "text_details", "purposes", "withdrawn")


class EventLedger(Protocol):
    """What the write path needs of a ledger (``_ledger.Ledger`` is one)."""

    async def record(self, sub: str, event: ConsentEvent) -> str: ...
    async def confirm(self, entry_id: str) -> None: ...
    async def abandon(self, entry_id: str, reason: str) -> None: ...


def iso_date(ms: int) -> str:
    """UTC, millisecond precision, ``Z``: the state's ``date`` as it has always read."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def terms_address(settings: Settings) -> str:
    """CONSENT_TERMS_URL as an absolute URL, as records and receipts name the terms: a
    path is one of the app's, below APP_BASE_URL's path like every path setting (a receipt
    downloaded with "/terms" would say nothing of which site, nor which mount)."""
    if settings.terms_url.startswith("/"):
        return settings.app_base_url + settings.terms_url
    return settings.terms_url


def terms_statement(settings: Settings) -> str:
    """The exact text the user agrees to; its SHA-256 goes into the record."""
    return settings.terms_text or (
        f"I have read and accept version {settings.terms_version} of the terms "
        f"published at {terms_address(settings)}."
    )


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shown_sha256(purposes: Iterable[Purpose], statement: str = "") -> str:
    """A digest of what a consent form showed: the terms ``statement`` (on the terms page)
    and each purpose's id, version, title and text. The form carries it back, and a choice
    is recorded only when it still matches: a text changed while the page was open (a
    deploy that kept the version) is never recorded as the one the user read."""
    lines = [statement] if statement else []
    lines += [f"{p.id} {p.version}: {p.title}: {p.text}" for p in sorted(purposes, key=_id)]
    return text_sha256("\n".join(lines))


def _id(purpose: Purpose) -> str:
    return purpose.id


def stored_consent(user: Mapping[str, Any]) -> Mapping[str, Any]:
    """``app_metadata.consent`` of a Management API user, or an empty record."""
    app_metadata = user.get("app_metadata")
    consent = app_metadata.get("consent") if isinstance(app_metadata, Mapping) else None
    return consent if isinstance(consent, Mapping) else {}


def history_of(consent: Mapping[str, Any]) -> list[ConsentEvent]:
    """The stored events, oldest first; malformed entries are skipped, never fatal."""
    raw = consent.get("history")
    events = [ConsentEvent.from_record(item) for item in raw] if isinstance(raw, list) else []
    return [event for event in events if event is not None]


def state_of(consent: Mapping[str, Any]) -> dict[str, Any]:
    return {key: consent[key] for key in STATE_FIELDS if key in consent}


def applied(consent: Mapping[str, Any], event: ConsentEvent, limit: int) -> dict[str, Any]:
    """The record after ``event``: the new current state and the history, bounded to the
    ``limit`` most recent events."""
    state = state_of(consent)
    stored = state.get("purposes")
    # A record edited by hand may hold anything: only a mapping of purposes is kept.
    purposes = dict(stored) if isinstance(stored, Mapping) else {}
    if event.terms:
        given = event.action is ConsentAction.GIVEN
        state.update(
            given=given,
            withdrawn=not given,
            version=event.version,
            date=iso_date(event.date),
            text_sha256=event.text_sha256,
            text_details=event.text_details,
        )
    for purpose_id, choice in event.purposes.items():
        purposes[purpose_id] = choice.as_record()
    state["purposes"] = purposes
    history = [item.as_record() for item in history_of(consent)] + [event.as_record()]
    return {**state, "history": history[-limit:]}


def patch_body(consent: Mapping[str, Any]) -> dict[str, Any]:
    """One PATCH for both places (Auth0 merges the root keys of each metadata object)."""
    return {
        "app_metadata": {"consent": dict(consent)},
        "user_metadata": {"consent": state_of(consent)},
    }


def not_saved(exc: ManagementAPIError | LedgerError, what: str) -> str:
    """What the user is told when their ``what`` ("consent", "choice") was not saved:
    that nothing changed only when that is known."""
    if isinstance(exc, ManagementAPIError) and exc.outcome_unknown:
        return f"We could not confirm that your {what} was saved. Please try again in a moment."
    return (
        f"We could not save your {what} just now, and nothing was changed. "
        "Please try again in a moment."
    )


class LedgerOpener(Protocol):
    async def __call__(self) -> EventLedger: ...


@dataclass
class ConsentWriter:
    settings: Settings
    management: ManagementClient
    #: Opens the ledger on first use (a database down at start-up must not stop the gate;
    #: only choices wait for it), and again after a failed open.
    open_ledger: LedgerOpener | None = None
    ledger: EventLedger | None = None
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def _ledger(self) -> EventLedger | None:
        if self.ledger is None and self.open_ledger is not None:
            async with self._opening:
                if self.ledger is None:
                    self.ledger = await self.open_ledger()
        return self.ledger

    async def aclose(self) -> None:
        close = getattr(self.ledger, "close", None)
        if close is not None:
            await close()
        self.ledger = None

    def terms_event(
        self,
        action: ConsentAction,
        method: CollectionMethod,
        now_ms: int,
        purposes: Mapping[str, PurposeChoice] | None = None,
    ) -> ConsentEvent:
        settings = self.settings
        return ConsentEvent(
            action=action,
            version=settings.terms_version,
            date=now_ms,
            text_sha256=text_sha256(terms_statement(settings)),
            text_details=terms_address(settings),
            method=method,
            terms=True,
            purposes=dict(purposes or {}),
        )

    def choices(
        self, given: list[str], declined: list[str], now_ms: int
    ) -> dict[str, PurposeChoice]:
        """Purpose choices for an event: each id given or declined, at its current version."""
        by_id = {purpose.id: purpose for purpose in self.settings.purposes}
        made = {i: PurposeChoice(True, by_id[i].version, now_ms) for i in given if i in by_id}
        for i in declined:
            if i in by_id and i not in made:
                made[i] = PurposeChoice(False, by_id[i].version, now_ms)
        return made

    def purposes_event(
        self, action: ConsentAction, method: CollectionMethod, now_ms: int, ids: list[str]
    ) -> ConsentEvent:
        """One event for optional purposes given or withdrawn on their own."""
        by_id = {purpose.id: purpose for purpose in self.settings.purposes}
        given = action is ConsentAction.GIVEN
        choices = {i: PurposeChoice(given, by_id[i].version, now_ms) for i in ids}
        texts = "\n".join(f"{by_id[i].id} {by_id[i].version}: {by_id[i].text}" for i in sorted(ids))
        return ConsentEvent(
            action=action,
            version=self.settings.terms_version,
            date=now_ms,
            text_sha256=text_sha256(texts),
            text_details=terms_address(self.settings),
            method=method,
            terms=False,
            purposes=choices,
        )

    async def write(
        self, sub: str, event: ConsentEvent, extra_app_metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record ``event`` for ``sub`` (the caller holds the user's lock); returns the
        record as written. Raises ``LedgerError`` before Auth0 is touched when the ledger
        cannot take it, ``ManagementAPIError`` when Auth0 did not."""
        ledger = await self._ledger()
        entry = await ledger.record(sub, event) if ledger is not None else None
        try:
            user = await self.management.get_user(sub)
            consent = applied(stored_consent(user), event, self.settings.history_limit)
            body = patch_body(consent)
            body["app_metadata"].update(extra_app_metadata or {})
        except Exception as exc:
            # Nothing was sent to be written: the event never took effect.
            if entry is not None:
                await self._settle(entry, f"not written: {exc}", confirmed=False)
            raise
        try:
            await self.management.update_user(sub, body)
        except ManagementAPIError as exc:
            refused = exc.status_code is not None and 400 <= exc.status_code < 500
            if refused:  # Auth0 answered no (4xx): not applied
                if entry is not None:
                    await self._settle(entry, f"Auth0 refused: {exc}", confirmed=False)
                raise
            # No answer, or a server error after retries (a gateway that timed out after
            # Auth0 committed): read it back. Found, the choice stands.
            if await self._applied(sub, event):
                logger.warning("Auth0 applied the consent write its answer lost: %s", exc)
                if entry is not None:
                    await self._settle(entry, "", confirmed=True)
                return consent
            # Not found (or not readable) is not proof either: Auth0 may still apply it.
            # Neither a consent the ledger claims, nor one it denies: the row stays pending.
            if entry is not None:
                logger.warning("ledger entry %s left pending: Auth0 did not answer", entry)
            raise ManagementAPIError(
                f"the write's outcome is not known: {exc}", exc.status_code, outcome_unknown=True
            ) from exc
        if entry is not None:
            await self._settle(entry, "", confirmed=True)
        return consent

    async def _applied(self, sub: str, event: ConsentEvent) -> bool:
        """Whether ``event`` is in the user's stored history (each event carries its own
        millisecond and choices); False when the user cannot be read either."""
        try:
            user = await self.management.get_user(sub)
        except ManagementAPIError:
            return False
        return event in history_of(stored_consent(user))

    async def _settle(self, entry: str, reason: str, *, confirmed: bool) -> None:
        # After Auth0 answered, the ledger's second row is bookkeeping: if it fails, the
        # row stays pending (never a claimed consent) and the user's choice stands.
        assert self.ledger is not None
        try:
            if confirmed:
                await self.ledger.confirm(entry)
            else:
                await self.ledger.abandon(entry, reason)
        except LedgerError as exc:
            logger.warning("ledger entry %s left pending: %s", entry, exc)
