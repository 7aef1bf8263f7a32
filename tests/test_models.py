"""User and Consent as the app reads them: the consent parsed when first read, the claims
of a cached user read when first asked for."""

from __future__ import annotations

import copy
import pickle

import pytest

from consent_middleware import Consent, User
from consent_middleware._models import NO_PURPOSES
from consent_middleware._purposes import Purpose

CLAIM = "https://consent.example.com/consent"
CLAIMS = {
    "sub": "auth0|ada",
    "email": "ada@example.com",
    "name": "Ada",
    CLAIM: {"given": True, "version": "v2", "date": "2026-01-01T00:00:00Z"},
}


def test_a_user_built_by_hand_is_what_it_was_given() -> None:
    consent = Consent(given=True, version="v2")
    user = User(CLAIMS, consent)
    assert user.claims is CLAIMS and user.consent is consent
    assert (user.sub, user.email, user.name) == ("auth0|ada", "ada@example.com", "Ada")
    assert user == User(dict(CLAIMS), Consent(given=True, version="v2"))
    assert user != User(CLAIMS, None) and user != "auth0|ada"
    assert repr(user).startswith("User(claims=")
    with pytest.raises(AttributeError):
        user.claims = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(user)


def test_the_consent_claim_is_parsed_when_first_read() -> None:
    user = User.from_claims(CLAIMS, CLAIM)
    consent = user.consent
    assert consent is not None and consent.covers("v2") and user.consent is consent
    assert User.from_claims({"sub": "auth0|x", "email": 3}, CLAIM).consent is None
    assert User.from_claims({"sub": "auth0|x", "email": 3}, CLAIM).email is None
    assert user == User(CLAIMS, Consent.from_claim(CLAIMS[CLAIM]))


def test_a_deferred_user_reads_its_claims_once_and_only_when_asked() -> None:
    reads: list[int] = []

    def read() -> User:
        reads.append(1)
        return User.from_claims(CLAIMS, CLAIM)

    user = User.deferred("auth0|ada", read)
    assert user.sub == "auth0|ada" and reads == []
    assert repr(user) == "User(sub='auth0|ada', claims not read yet)"
    assert user.name == "Ada" and user.consent is not None and user.claims["sub"] == user.sub
    assert reads == [1]
    assert user == User.from_claims(CLAIMS, CLAIM)


def test_a_copy_or_a_pickle_is_a_plain_user_and_it_matches_by_field() -> None:
    # Never the reader (which holds the gate), never the unparsed-consent marker.
    lazy = User.from_claims(CLAIMS, CLAIM)
    deferred = User.deferred("auth0|ada", lambda: User.from_claims(CLAIMS, CLAIM))
    for user in (lazy, deferred):
        # The pickle is our own, made just above.
        pickled = pickle.loads(pickle.dumps(user))  # noqa: S301
        for copied in (copy.copy(user), copy.deepcopy(user), pickled):
            assert copied == lazy and copied.consent is not None and copied.consent.given
    match deferred:
        case User(claims, Consent(given=True, version=version)):
            assert (claims["sub"], version) == ("auth0|ada", "v2")
        case _:
            pytest.fail("a user matches by its claims and consent")


def test_no_purposes_given_is_one_shared_empty_set() -> None:
    # The admission cache holds the set per user: an empty one must not cost a new object.
    purposes = [Purpose(id="marketing", title="Newsletter", text="", version="1")]
    withdrawn = Consent(given=True, version="v2", withdrawn=True)
    assert Consent(given=True, version="v2").given_purposes(purposes) is NO_PURPOSES
    assert withdrawn.given_purposes(purposes) is NO_PURPOSES
