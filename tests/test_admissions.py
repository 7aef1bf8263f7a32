"""The admitted-request cache: in on the second miss, least recently used first out,
bounded by weight."""

from __future__ import annotations

import time

from consent_middleware import Session, TokenSet
from consent_middleware._admissions import KEY_TAIL, AdmissionCache, Admitted, entry_weight
from consent_middleware._gate import Verdict
from consent_middleware._models import User


def admitted(key: bytes, weight: int = 100) -> Admitted:
    session = Session.from_claims({"sub": "u"}, TokenSet("at", "idt"))
    user = User.from_claims(session.user, "https://c.example.com/c")
    until = time.time() + 60
    return Admitted(session, session, user, False, until, key, weight, Verdict.ALLOW, frozenset())


def put_twice(cache: AdmissionCache, entry: Admitted) -> None:
    cache.put(entry)  # first miss: remembered, not cached
    cache.put(entry)


def test_a_cookie_enters_on_its_second_miss() -> None:
    cache = AdmissionCache(max_weight=300)
    cache.put(admitted(b"a"))
    assert cache.get(b"a") is None and len(cache) == 0
    cache.put(admitted(b"a"))
    assert cache.get(b"a") is not None and cache.weight == 100


def test_the_least_recently_used_goes_first() -> None:
    cache = AdmissionCache(max_weight=300)
    for key in (b"a", b"b", b"c"):
        put_twice(cache, admitted(key))
    assert cache.get(b"a") is not None  # a is now the most recent
    put_twice(cache, admitted(b"d"))
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert len(cache) == 3 and cache.weight == 300


def test_more_users_than_fit_round_robin_are_left_to_the_cold_path() -> None:
    # Ten users in turn where three fit: a plain LRU would insert and evict on every
    # request and hit none. Here nobody gets in, so nothing is inserted or evicted.
    cache = AdmissionCache(max_weight=300)
    keys = [f"user{i}".encode() for i in range(10)]
    for _ in range(5):
        for key in keys:
            assert cache.get(key) is None
            cache.put(admitted(key))
    assert len(cache) == 0 and cache.weight == 0
    # The same users, three of them at a time: those fit, and stay.
    for _ in range(3):
        for key in keys[:3]:
            if cache.get(key) is None:
                cache.put(admitted(key))
    assert all(cache.get(key) is not None for key in keys[:3])


def test_weight_not_count_bounds_it_and_a_giant_is_never_cached() -> None:
    cache = AdmissionCache(max_weight=1000)
    put_twice(cache, admitted(b"small", 100))
    put_twice(cache, admitted(b"big", 950))
    assert cache.get(b"small") is None and cache.weight == 950
    put_twice(cache, admitted(b"giant", 1001))
    assert cache.get(b"giant") is None and cache.get(b"big") is not None
    # The same key again replaces its entry and its weight, with no second miss needed.
    cache.put(admitted(b"big", 500))
    assert cache.weight == 500 and len(cache) == 1
    cache.pop(b"big")
    cache.pop(b"absent")
    assert cache.weight == 0 and len(cache) == 0
    assert entry_weight(1000) > 2000 - 1000 and entry_weight(1000, True) > 2000


def test_a_cookie_sharing_an_entrys_tail_is_not_that_entry() -> None:
    cache = AdmissionCache(max_weight=1000)
    tail = b"t" * KEY_TAIL
    put_twice(cache, admitted(b"victim" + tail))
    assert cache.get(b"victim" + tail) is not None
    assert cache.get(b"forged" + tail) is None
    cache.pop(b"forged" + tail)  # not the entry: nothing removed
    assert cache.get(b"victim" + tail) is not None
