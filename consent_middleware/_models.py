"""What the gate hands to the app: the user and their consent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Consent:
    """The consent claim from the verified ID token (``user_metadata.consent``)."""

    given: bool
    version: str | None = None
    date: str | None = None
    text_details: str | None = None
    withdrawn: bool = False

    @classmethod
    def from_claim(cls, value: object) -> Consent | None:
        if not isinstance(value, Mapping):
            return None
        version = value.get("version")
        return cls(
            # Only a real JSON true counts; "true" or 1 from a hand-edited record does not.
            given=value.get("given") is True,
            version=str(version) if version is not None else None,
            date=_str_or_none(value.get("date")),
            text_details=_str_or_none(value.get("text_details")),
            withdrawn=value.get("withdrawn") is True,
        )

    def covers(self, terms_version: str) -> bool:
        return self.given and not self.withdrawn and self.version == terms_version


@dataclass(frozen=True)
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


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
