"""Requests the gate already admitted, remembered by their session cookies.

A consented user's next request with the same cookies costs one dict lookup: no
decryption, no parsing. Entries are bounded by an estimate of their memory, not by count
(a session's size follows its tokens, which the provider or a client chooses), and each is
re-checked by the full path after ``REVALIDATE_AFTER`` seconds or at session expiry.
"""

from __future__ import annotations

from collections import OrderedDict

import orjson

from ._gate import Verdict
from ._models import User
from ._session import Session, SessionSummary

# The memory the cache may take, estimated from the session cookies' sizes. Small on
# purpose: past it, a request pays the cold path (decrypt, parse), which is cheap, while a
# cache that grows with the number of users is memory that grows with them.
ADMITTED_CACHE_BYTES = 12 * 1024 * 1024
REVALIDATE_AFTER = 60.0
# What an entry costs beside its user's claims: the User, the summary, the slot, the key
# (measured with tracemalloc: 1.8 KB per entry for a session with four claims).
ENTRY_OVERHEAD = 1344
# An entry is found by a hash of the session's cookies and confirmed by their end, the
# JWE's authentication tag (128 random-looking bits for every cookie written): an entry
# never holds the cookie itself, whose size follows the tokens. To pass as a cached
# cookie, a different one would need the same tag and the same hash, which is keyed by
# a secret chosen at start-up (Python's SipHash): without the cached cookie in hand,
# neither can be known.
KEY_TAIL = 24


class Admitted:
    """The gate's decision for one session cookie, and what a request it admits carries."""

    # A plain class with slots, not a frozen dataclass: it is built on every cold request,
    # and a frozen dataclass sets each field through object.__setattr__.
    __slots__ = (
        "digest", "facts", "purposes", "roll", "session", "tail", "until", "user", "verdict",
        "weight",
    )  # fmt: skip

    def __init__(
        self,
        facts: Session | SessionSummary,
        session: Session | None,
        user: User,
        roll: bool,
        until: float,
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
        self.verdict = verdict
        #: The optional purposes given (for their current versions), for CONSENT_REQUIRE.
        self.purposes = purposes
        # Set by the cache when the entry goes in.
        self.digest = 0
        self.tail = b""
        self.weight = 0


def entry_weight(entry: Admitted, cookie_bytes: int) -> int:
    """What an entry takes: its user's claims (about twice their JSON as objects), a
    fixed cost, and the decoded session with its tokens when the gate parsed one (about
    the cookie's size again)."""
    claims = 2 * len(orjson.dumps(entry.facts.user, default=str))
    return ENTRY_OVERHEAD + claims + (cookie_bytes if entry.session is not None else 0)


class AdmissionCache:
    """A least-recently-used map from session cookies to admissions, bounded by weight.

    The standard library's ``OrderedDict`` (a C linked list: moving a hit to the end and
    evicting the oldest are both O(1)) with the weight kept beside it: a hit costs a
    fraction of a ``cachetools`` LRU lookup, and this lookup is the gate's whole cost for
    a known user. (A plain dict evicted from the front slows down as deleted slots pile up
    there: with more users than fit, every request evicts.)

    While there is room, every admitted cookie goes in. Once full, a cookie enters on its
    second miss, and only while the cookies missed since would still fit (a "doorkeeper"
    of the recent misses, bounded by the same weight): that is when least-recently-used
    keeps it long enough to be hit. With more active users than fit, a plain LRU inserts
    and evicts on every request and hits none; this one keeps those it holds and leaves
    the others to the cold path, which then pays no insert, no eviction and no collector
    work for entries that would have died unused.
    """

    def __init__(self, max_weight: int = ADMITTED_CACHE_BYTES) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[int, Admitted] = OrderedDict()
        # Recent misses by digest, with the weight each would have taken.
        self._missed: OrderedDict[int, int] = OrderedDict()
        self._missed_weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Admitted | None:
        digest = hash(key)
        entry = self._entries.get(digest)
        if entry is None or key[-KEY_TAIL:] != entry.tail:
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, key: bytes, entry: Admitted) -> None:
        digest = hash(key)
        entries = self._entries
        # An entry due for its re-check is replaced where it stands; a new one goes in
        # while there is room, or once it has been missed recently. A full cache asks the
        # doorkeeper with the average weight: most misses go no further, and weighing an
        # entry (serialising its claims) is left to those that go in.
        if digest not in entries and self.weight + ENTRY_OVERHEAD > self.max_weight:
            if not self._seen(digest, self.weight // len(entries) if entries else 0):
                return
        weight = entry_weight(entry, len(key))
        if weight > self.max_weight:
            return  # larger than the whole budget: served, never cached
        self.discard(entries.get(digest))
        entry.digest, entry.tail, entry.weight = digest, key[-KEY_TAIL:], weight
        entries[digest] = entry
        self.weight += weight
        while self.weight > self.max_weight:
            self.weight -= entries.popitem(last=False)[1].weight

    def discard(self, entry: Admitted | None) -> None:
        """Remove ``entry`` if it is the one cached for its cookie."""
        if entry is not None and self._entries.get(entry.digest) is entry:
            del self._entries[entry.digest]
            self.weight -= entry.weight

    def _seen(self, digest: int, weight: int) -> bool:
        """Whether ``digest`` was missed recently (and forget it); else remember it."""
        missed = self._missed
        before = missed.pop(digest, None)
        if before is not None:
            self._missed_weight -= before
            return True
        missed[digest] = weight
        self._missed_weight += weight
        while self._missed_weight > self.max_weight:
            self._missed_weight -= missed.popitem(last=False)[1]
        return False
