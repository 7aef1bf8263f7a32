"""What the gate hands to the app: the user and their consent."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._events import PurposeChoice
from ._purposes import Purpose

# One empty set for every consent without purposes (each frozenset() is a new object, which
# the admission cache would hold per user).
NO_PURPOSES: frozenset[str] = frozenset()


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
            return NO_PURPOSES
        given = set()
        for purpose in purposes:
            choice = self.purposes.get(purpose.id)
            if choice is not None and choice.given and choice.version == purpose.version:
                given.add(purpose.id)
        return frozenset(given) if given else NO_PURPOSES


class User:
    """A logged-in user, as the verified ID token described them.

    Built by the gate for every request it lets through. A user it has seen recently is
    answered from its cache without reading the cookie again, so ``claims`` may be read
    only when a route first asks for them, and ``consent`` parsed only then: ``sub``
    never waits.
    """

    # A plain class with slots, read-only from outside: the gate builds one per request for
    # a user it admits from its cache until a route reads the claims (see ``deferred``).
    __slots__ = ("_claim", "_claims", "_consent", "_read", "_sub")

    def __init__(self, claims: Mapping[str, Any], consent: Consent | None) -> None:
        self._claims = claims
        self._consent: Consent | None = consent
        self._claim = ""
        self._read: Callable[[], User] | None = None
        self._sub: str | None = None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], consent_claim: str) -> User:
        """The user of these claims; the consent claim (``consent_claim``) is parsed when
        first read (a route showing a name never pays for it)."""
        user = cls.__new__(cls)
        user._claims, user._consent, user._claim = claims, _UNPARSED, consent_claim
        user._read = user._sub = None
        return user

    @classmethod
    def deferred(cls, sub: str, read: Callable[[], User]) -> User:
        """A user known by ``sub`` whose claims ``read`` returns (as a user) when a route
        first asks for them: the gate keeps no claims for a route that never reads them."""
        user = cls.__new__(cls)
        user._claims, user._consent, user._claim = _NO_CLAIMS, None, ""
        user._read, user._sub = read, sub
        return user

    @property
    def claims(self) -> Mapping[str, Any]:
        if self._read is not None:
            self._load()
        return self._claims

    @property
    def consent(self) -> Consent | None:
        if self._read is not None:
            self._load()
        consent = self._consent
        if consent is _UNPARSED:
            consent = self._consent = Consent.from_claim(self._claims.get(self._claim))
        return consent

    @property
    def sub(self) -> str:
        sub = self._sub
        return sub if sub is not None else str(self.claims["sub"])

    @property
    def email(self) -> str | None:
        return _str_or_none(self.claims.get("email"))

    @property
    def name(self) -> str | None:
        return _str_or_none(self.claims.get("name"))

    def _load(self) -> None:
        read = self._read
        if read is not None:
            user = read()  # raising leaves it unread: never an empty user by mistake
            self._claims, self._consent, self._claim = user._claims, user._consent, user._claim
            self._read = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, User):
            return NotImplemented
        return (self.claims, self.consent) == (other.claims, other.consent)

    # Equal users compare by claims, which are a mapping: no hash.
    __hash__ = None  # type: ignore[assignment]
    __match_args__ = ("claims", "consent")

    def __reduce__(self) -> tuple[type[User], tuple[Mapping[str, Any], Consent | None]]:
        # A copy or a pickle is a plain user: claims read (a deferred user's cookie is
        # opened for it), consent parsed; never the reader, which holds the gate.
        return type(self), (self.claims, self.consent)

    def __repr__(self) -> str:
        if self._read is not None:
            return f"User(sub={self._sub!r}, claims not read yet)"
        return f"User(claims={self._claims!r}, consent={self.consent!r})"


# A consent claim not parsed yet (None is a parsed claim that says nothing).
_UNPARSED: Any = object()
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


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
