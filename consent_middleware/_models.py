"""What the gate hands to the app: the user and their consent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._events import PurposeChoice
from ._purposes import Purpose


@dataclass(frozen=True, slots=True)
class Consent:
    """The consent claim from the verified ID token: the current state of
    ``app_metadata.consent`` (never its history)."""

    given: bool
    version: str | None = None
    date: str | None = None
    text_details: str | None = None
    withdrawn: bool = False
    text_sha256: str | None = None
    #: Optional purposes by id: given or not, for which version, since when.
    purposes: Mapping[str, PurposeChoice] = field(default_factory=dict)

    @classmethod
    def from_claim(cls, value: object) -> Consent | None:
        # dict first: a decoded claim always is one, and the ABC check costs more. Built
        # on every request from a user the gate has not seen recently: positional
        # arguments, and the str checks inline.
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        get = value.get
        version, date, details, digest = (
            get("version"), get("date"), get("text_details"), get("text_sha256"),
        )  # fmt: skip
        return cls(
            # Only a real JSON true counts; "true" or 1 from a hand-edited record does not.
            get("given") is True,
            str(version) if version is not None else None,
            date if isinstance(date, str) else None,
            details if isinstance(details, str) else None,
            get("withdrawn") is True,
            digest if isinstance(digest, str) else None,
            _purposes(value["purposes"]) if "purposes" in value else {},
        )

    def covers(self, terms_version: str) -> bool:
        return self.given and not self.withdrawn and self.version == terms_version

    def given_purposes(self, purposes: Iterable[Purpose]) -> frozenset[str]:
        """The ids of ``purposes`` given for their current version (a bumped version asks
        again); nothing while the terms themselves are withdrawn."""
        if self.withdrawn:
            return frozenset()
        given = set()
        for purpose in purposes:
            choice = self.purposes.get(purpose.id)
            if choice is not None and choice.given and choice.version == purpose.version:
                given.add(purpose.id)
        return frozenset(given)


@dataclass(frozen=True, slots=True)
class User:
    """A logged-in user, as the verified ID token described them."""

    claims: Mapping[str, Any]
    consent: Consent | None

    @property
    def sub(self) -> str:
        return str(self.claims["sub"])

    @property
    def email(self) -> str | None:
        return _str_or_none(self.claims.get("email"))

    @property
    def name(self) -> str | None:
        return _str_or_none(self.claims.get("name"))

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], consent_claim: str) -> User:
        return cls(claims=claims, consent=Consent.from_claim(claims.get(consent_claim)))


def _purposes(value: object) -> dict[str, PurposeChoice]:
    if not isinstance(value, Mapping):
        return {}
    choices = {}
    for purpose_id, raw in value.items():
        choice = PurposeChoice.from_record(raw)
        if isinstance(purpose_id, str) and choice is not None:
            choices[purpose_id] = choice
    return choices


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
