"""Consent events: what a user gave or withdrew, when, and how it was collected.

One event is one choice the user made, as GDPR Art. 7(1) asks the controller to be able to
show. The same record goes to Auth0 (``app_metadata.consent.history``, where a user cannot
write) and to the ledger the app owns. Dates are UTC milliseconds since the epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConsentAction(enum.StrEnum):
    GIVEN = "given"
    WITHDRAWN = "withdrawn"


class CollectionMethod(enum.StrEnum):
    """Where the choice was made (the consent receipt's ``collection method``)."""

    TERMS_PAGE = "terms_page"
    PURPOSE_PAGE = "purpose_page"
    WITHDRAW_PAGE = "withdraw_page"
    HISTORY_PAGE = "history_page"
    API = "api"


# Dates are UTC milliseconds between the epoch and the end of year 9999: a stored record
# is not trusted to hold one (a hand-edited 10**20 must not break a page).
MAX_DATE_MS = 253_402_300_799_999


def _date_ms(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DATE_MS:
        return value
    return None


@dataclass(frozen=True, slots=True)
class PurposeChoice:
    """One optional purpose's state: given or not, for which version, since when (UTC ms)."""

    given: bool
    version: str
    date: int

    def as_record(self) -> dict[str, Any]:
        return {"given": self.given, "version": self.version, "date": self.date}

    @classmethod
    def from_record(cls, value: object) -> PurposeChoice | None:
        if not isinstance(value, Mapping):
            return None
        version, date = value.get("version"), _date_ms(value.get("date"))
        if not isinstance(version, str) or date is None:
            return None
        return cls(given=value.get("given") is True, version=version, date=date)


@dataclass(frozen=True)
class ConsentEvent:
    """One choice. ``terms`` says whether it concerns the required terms (accepting or
    withdrawing them); ``purposes`` holds the optional purposes it set, each with its own
    state, so a purpose given or withdrawn on its own is an event with ``terms`` false."""

    action: ConsentAction
    version: str
    date: int
    text_sha256: str
    text_details: str
    method: CollectionMethod
    terms: bool = True
    purposes: Mapping[str, PurposeChoice] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "version": self.version,
            "date": self.date,
            "text_sha256": self.text_sha256,
            "text_details": self.text_details,
            "method": self.method.value,
            "terms": self.terms,
            "purposes": {pid: choice.as_record() for pid, choice in sorted(self.purposes.items())},
        }

    @classmethod
    def from_record(cls, value: object) -> ConsentEvent | None:
        """The event a stored record describes, or None for anything malformed (a record is
        read back from Auth0 and the ledger; neither is trusted to be well formed)."""
        if not isinstance(value, Mapping):
            return None
        try:
            action = ConsentAction(str(value.get("action")))
            method = CollectionMethod(str(value.get("method")))
        except ValueError:
            return None
        version, date = value.get("version"), _date_ms(value.get("date"))
        if not isinstance(version, str) or date is None:
            return None
        raw_purposes = value.get("purposes")
        purposes: dict[str, PurposeChoice] = {}
        if isinstance(raw_purposes, Mapping):
            for pid, raw in raw_purposes.items():
                choice = PurposeChoice.from_record(raw)
                if isinstance(pid, str) and choice is not None:
                    purposes[pid] = choice
        return cls(
            action=action,
            version=version,
            date=date,
            text_sha256=str(value.get("text_sha256", "")),
            text_details=str(value.get("text_details", "")),
            method=method,
            terms=value.get("terms", True) is not False,
            purposes=purposes,
        )
