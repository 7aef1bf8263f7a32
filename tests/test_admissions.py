"""The admitted-request cache: least recently used first out, bounded by weight."""

from __future__ import annotations

import time

from consent_middleware import Session, TokenSet
from consent_middleware._admissions import AdmissionCache, Admitted, entry_weight
from consent_middleware._gate import Verdict
from consent_middleware._models import User


def admitted(key: bytes, weight: int = 100) -> Admitted:
    session = Session.from_claims({"sub": "u"}, TokenSet("at", "idt"))
    user = User.from_claims(session.user, "https://c.example.com/c")
    return Admitted(session, user, False, time.time() + 60, key, weight, Verdict.ALLOW, frozenset())


def test_the_least_recently_used_goes_first() -> None:
    cache = AdmissionCache(max_weight=300)
    for key in (b"a", b"b", b"c"):
        cache.put(admitted(key))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(admitted(b"d"))
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert len(cache) == 3 and cache.weight == 300


def test_weight_not_count_bounds_it_and_a_giant_is_never_cached() -> None:
    cache = AdmissionCache(max_weight=1000)
    cache.put(admitted(b"small", 100))
    cache.put(admitted(b"big", 950))
    assert cache.get(b"small") is None and cache.weight == 950
    cache.put(admitted(b"giant", 1001))
    assert cache.get(b"giant") is None and cache.get(b"big") is not None
    # The same key again replaces its entry and its weight.
    cache.put(admitted(b"big", 500))
    assert cache.weight == 500 and len(cache) == 1
    cache.pop(b"big")
    cache.pop(b"absent")
    assert cache.weight == 0 and len(cache) == 0
    assert entry_weight(1000) > 2000
