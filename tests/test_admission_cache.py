"""The admitted-request cache: in while there is room (then on a second miss), least
recently used first out, bounded by weight, never holding the cookie itself."""

from __future__ import annotations

import time
from sys import getsizeof

import pytest

from consent_middleware import Session, TokenSet
from consent_middleware._admission_cache import (
    ENTRY_OVERHEAD,
    KEY_TAIL,
    AdmissionCache,
    Admitted,
    RecentMisses,
    entry_weight,
)
from consent_middleware._gate import Verdict
from consent_middleware._models import User


def admitted(
    padding: int = 0, with_session: bool = False, read: bool = True, **claims: object
) -> Admitted:
    """An admission whose user a route has read (or not: ``read``)."""
    session = Session.from_claims(
        {"sub": "u", "pad": "x" * padding, **claims}, TokenSet("at", "idt")
    )
    user = User.from_claims(session.user, "https://c.example.com/c") if read else None
    until = time.time() + 60
    kept = session if with_session else None
    return Admitted(session, kept, user, False, until, Verdict.ALLOW, frozenset())


ONE = entry_weight(admitted(), 0)


def cookie(name: str) -> bytes:
    return f"__session={name}.{'t' * KEY_TAIL}{name}".encode()


def put_twice(cache: AdmissionCache, key: bytes) -> None:
    cache.put(key, admitted())  # a full cache: remembered, not cached
    cache.put(key, admitted())


def test_in_while_there_is_room_then_on_a_second_miss() -> None:
    cache = AdmissionCache(max_weight=2 * ONE)
    cache.put(cookie("a"), admitted())
    cache.put(cookie("b"), admitted())
    assert cache.get(cookie("a")) is not None and cache.get(cookie("b")) is not None
    cache.put(cookie("c"), admitted())
    assert cache.get(cookie("c")) is None and len(cache) == 2
    cache.put(cookie("c"), admitted())
    assert cache.get(cookie("c")) is not None and cache.get(cookie("a")) is None


def test_the_least_recently_used_goes_first() -> None:
    cache = AdmissionCache(max_weight=3 * ONE)
    for name in "abc":
        cache.put(cookie(name), admitted())
    assert cache.get(cookie("a")) is not None  # a is now the most recent
    put_twice(cache, cookie("d"))
    assert cache.get(cookie("b")) is None and cache.get(cookie("a")) is not None
    assert len(cache) == 3 and cache.weight == 3 * ONE


@pytest.mark.parametrize("spare", [0, ONE // 2], ids=["exactly full", "room for a small one"])
def test_more_users_than_fit_round_robin_are_left_to_the_cold_path(
    spare: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten users in turn where three fit: a plain LRU would insert and evict on every
    # request and hit none. Here the first three stay, and the others cost no eviction,
    # also when the room left would take a smaller entry than these.
    assert spare > ENTRY_OVERHEAD or spare == 0
    # The policy, not the filter's false positives: a 64-bit filter for three entries lets
    # a cookie in on its first miss now and then (a bytes hash differs with each run's
    # PYTHONHASHSEED), evicting one of the three. Wide enough here for none.
    monkeypatch.setattr(RecentMisses, "BITS_PER_MISS", 4096)
    cache = AdmissionCache(max_weight=3 * ONE + spare)
    keys = [cookie(f"user{i}") for i in range(10)]
    hits = 0
    for _ in range(5):
        for key in keys:
            if cache.get(key) is None:
                cache.put(key, admitted())
            else:
                hits += 1
    assert len(cache) == 3 and hits == 4 * 3
    assert all(cache.get(key) is not None for key in keys[:3])


def test_weight_follows_the_claims_not_the_tokens() -> None:
    # The cookie's size only counts when the entry keeps the decoded session.
    assert entry_weight(admitted(), 50_000) == ONE < 3 * ENTRY_OVERHEAD
    assert entry_weight(admitted(with_session=True), 50_000) == ONE + 50_000
    assert entry_weight(admitted(padding=1000), 0) == ONE + 1000
    cache = AdmissionCache(max_weight=10 * ONE)
    cache.put(cookie("small"), admitted())
    big = int(8.6 * ONE)  # an entry of about 9.6 ONE: with "small", over the budget
    cache.put(cookie("big"), admitted(padding=big))
    assert cache.get(cookie("small")) is None and cache.get(cookie("big")) is not None
    cache.put(cookie("giant"), admitted(padding=10 * ONE))
    cache.put(cookie("giant"), admitted(padding=10 * ONE))
    assert cache.get(cookie("giant")) is None and cache.get(cookie("big")) is not None
    # The same cookie again replaces its entry and its weight.
    again = admitted()
    cache.put(cookie("big"), again)
    assert cache.weight == ONE and len(cache) == 1 and cache.get(cookie("big")) is again
    cache.discard(admitted())  # not the cached entry: nothing removed
    assert len(cache) == 1
    cache.discard(again)
    cache.discard(None)
    assert cache.weight == 0 and len(cache) == 0


def test_an_entry_holds_no_cookie_and_answers_only_its_own() -> None:
    cache = AdmissionCache(max_weight=10 * ONE)
    victim = cookie("victim")
    cache.put(victim, admitted())
    entry = cache.get(victim)
    assert entry is not None and len(entry.tail) == KEY_TAIL
    assert not any(victim in repr(getattr(entry, slot)).encode() for slot in entry.__slots__)
    # Another cookie ending the same way is not this entry (its hash differs).
    assert cache.get(b"__session=forged." + victim[-KEY_TAIL:]) is None


def test_any_claims_are_weighed() -> None:
    # Integers past 64 bits, and nesting deeper than the interpreter's recursion limit.
    cache = AdmissionCache(max_weight=2**21)
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(5000):
        inner["n"] = inner = {}
    entry = admitted(big=2**70, nested=nested)
    cache.put(cookie("odd"), entry)
    assert cache.get(cookie("odd")) is entry and cache.weight > ONE + 5000 * 64


def test_an_entry_holds_its_user_only_once_a_route_read_it() -> None:
    # Until then it weighs a fraction of an entry with the user's claims, whatever their
    # size: an API that never reads them fits several times the users in the same budget.
    compact = admitted(padding=5000, read=False)
    assert entry_weight(compact, 0) == entry_weight(admitted(read=False), 0) < ONE // 2 + 200
    cache = AdmissionCache(max_weight=10 * ONE)
    cache.put(cookie("api"), compact)
    before = cache.weight
    compact.user = User.from_claims({"sub": "u", "pad": "x" * 5000}, "https://c.example.com/c")
    assert cache.weight == before  # set by a read in any thread: counted on the loop
    cache.weigh_user(compact)
    assert compact.user_weighed and cache.weight == compact.weight > before + 5000
    # An entry no longer cached keeps the user for its request, weighing nothing.
    gone = admitted(read=False)
    gone.user = compact.user
    cache.weigh_user(gone)
    assert gone.user_weighed and cache.weight == compact.weight


def test_with_purposes_required_an_entry_weighs_the_purposes_given() -> None:
    entry = admitted(read=False)
    plain = entry_weight(entry, 0)
    entry.purposes = frozenset({"marketing", "analytics"})
    assert entry_weight(entry, 0) == plain + getsizeof(entry.purposes)


def test_an_empty_cache_weighs_nothing_whatever_was_counted() -> None:
    cache = AdmissionCache(max_weight=2 * ONE)
    cache.put(cookie("a"), admitted())
    cache.weight += 10 * ONE  # an accounting slip, anywhere
    put_twice(cache, cookie("b"))  # in on its second miss, and the eviction empties it all
    assert len(cache) == 0 and cache.weight == 0
    cache.put(cookie("c"), admitted())
    assert cache.get(cookie("c")) is not None and cache.weight == ONE


def test_the_smallest_doorkeeper_still_remembers_the_last_miss() -> None:
    misses = RecentMisses(capacity=0)  # a budget under one entry: 64 bits
    digest = hash(b"one cookie")
    assert misses.size == 64 and not misses.missed_before(digest, span=0)
    assert misses.missed_before(digest, span=0)


def test_recent_misses_are_remembered_for_one_to_two_spans_in_bits() -> None:
    misses = RecentMisses(capacity=1000)
    assert misses.size == 16_000  # 4 KB in all, whatever the misses
    digests = [hash(f"cookie {i}".encode()) for i in range(3000)]
    assert not misses.missed_before(digests[0], span=100)
    assert misses.missed_before(digests[0], span=100)
    for digest in digests[1:100]:
        misses.missed_before(digest, span=100)
    assert misses.missed_before(digests[0], span=100)  # one span on: still remembered
    for digest in digests[100:300]:
        misses.missed_before(digest, span=100)
    assert not misses.missed_before(digests[0], span=100)  # over two spans on: forgotten
    # False positives: digests never missed that pass as missed, at a full span.
    full = RecentMisses(capacity=1000)
    for digest in digests[:1000]:
        full.missed_before(digest, span=1000)
    # (Each stranger is remembered in turn: a few hundred fill the newer filter little.)
    strangers = [hash(f"stranger {i}".encode()) for i in range(400)]
    passed = sum(full.missed_before(digest, span=10**9) for digest in strangers)
    assert passed < 0.03 * len(strangers)
