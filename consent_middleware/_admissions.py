"""Requests the gate already admitted, remembered by their session cookies.

A consented user's next request with the same cookies costs one dict lookup: no
decryption, no parsing. Entries are bounded by an estimate of their memory, not by count
(a session's size follows its tokens, which the provider or a client chooses), and each is
re-checked by the full path after ``REVALIDATE_AFTER`` seconds or at session expiry.
"""

from __future__ import annotations

from collections import OrderedDict

from ._gate import Verdict
from ._models import User
from ._session import Session, SessionSummary

# The memory the cache may take, estimated from the session cookies' sizes. Small on
# purpose: past it, a request pays the cold path (decrypt, parse), which is cheap, while a
# cache that grows with the number of users is memory that grows with them.
ADMITTED_CACHE_BYTES = 12 * 1024 * 1024
REVALIDATE_AFTER = 60.0
# What an entry costs beside its cookie bytes: the decoded session, its objects, the slot.
ENTRY_OVERHEAD = 1024
# The entries are found by the end of the session's cookies: the JWE's authentication tag,
# random for every cookie written, so a short key (hashed in nanoseconds where the whole
# cookie takes half a microsecond) that is then compared with the whole cookie.
KEY_TAIL = 24


class Admitted:
    """The gate's decision for one session cookie, and what a request it admits carries."""

    # A plain class with slots, not a frozen dataclass: it is built on every cold request,
    # and a frozen dataclass sets each field through object.__setattr__.
    __slots__ = (
        "facts", "key", "purposes", "roll", "session", "until", "user", "verdict", "weight",
    )  # fmt: skip

    def __init__(
        self,
        facts: Session | SessionSummary,
        session: Session | None,
        user: User,
        roll: bool,
        until: float,
        key: bytes,
        weight: int,
        verdict: Verdict,
        purposes: frozenset[str],
    ) -> None:
        #: What the gate read of the session (sid, sub, issued and expiry times).
        self.facts = facts
        #: The full session, when the gate parsed one (a roll, a claim read from the ID
        #: token, a server-side store); otherwise parsed when the request needs it.
        self.session = session
        self.user = user
        self.roll = roll
        self.until = until
        self.key = key
        self.weight = weight
        self.verdict = verdict
        #: The optional purposes given (for their current versions), for CONSENT_REQUIRE.
        self.purposes = purposes


def entry_weight(cookie_bytes: int, with_session: bool = False) -> int:
    """The entry holds its key (the cookie bytes), the user's claims and, when the gate
    parsed one, the decoded session (tokens included: about the cookie's size again)."""
    return (2 if with_session else 1) * cookie_bytes + ENTRY_OVERHEAD


class AdmissionCache:
    """A least-recently-used map from session cookies to admissions, bounded by weight.

    The standard library's ``OrderedDict`` (a C linked list: moving a hit to the end and
    evicting the oldest are both O(1)) with the weight kept beside it: a hit costs a
    fraction of a ``cachetools`` LRU lookup, and this lookup is the gate's whole cost for
    a known user. (A plain dict evicted from the front slows down as deleted slots pile up
    there: with more users than fit, every request evicts.)

    A cookie enters on its second miss, and only while the cookies missed since would
    still fit (a "doorkeeper" of the recent misses, bounded by the same weight): that is
    when least-recently-used keeps it long enough to be hit. With more active users than
    fit, a plain LRU inserts and evicts on every request and hits none; this one leaves
    them to the cold path, which then pays no insert, no eviction and no collector work
    for entries that would have died unused.
    """

    def __init__(self, max_weight: int = ADMITTED_CACHE_BYTES) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[bytes, Admitted] = OrderedDict()
        # Recent misses by key tail, with the weight each would have taken.
        self._missed: OrderedDict[bytes, int] = OrderedDict()
        self._missed_weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Admitted | None:
        tail = key[-KEY_TAIL:]
        entry = self._entries.get(tail)
        if entry is None or entry.key != key:
            return None
        self._entries.move_to_end(tail)
        return entry

    def put(self, entry: Admitted) -> None:
        if entry.weight > self.max_weight:
            return  # larger than the whole budget: served, never cached
        tail = entry.key[-KEY_TAIL:]
        # An entry due for its re-check is replaced where it stands; a new one must have
        # been missed recently.
        if tail not in self._entries and not self._seen(tail, entry.weight):
            return
        self.pop(entry.key)
        entries = self._entries
        entries[tail] = entry
        self.weight += entry.weight
        while self.weight > self.max_weight:
            self.weight -= entries.popitem(last=False)[1].weight

    def pop(self, key: bytes) -> None:
        tail = key[-KEY_TAIL:]
        entry = self._entries.get(tail)
        if entry is not None and entry.key == key:
            del self._entries[tail]
            self.weight -= entry.weight

    def _seen(self, tail: bytes, weight: int) -> bool:
        """Whether ``tail`` was missed recently (and forget it); else remember it."""
        missed = self._missed
        before = missed.pop(tail, None)
        if before is not None:
            self._missed_weight -= before
            return True
        missed[tail] = weight
        self._missed_weight += weight
        while self._missed_weight > self.max_weight:
            self._missed_weight -= missed.popitem(last=False)[1]
        return False
