"""Requests the gate already admitted, remembered by their session cookies.

A consented user's next request with the same cookies costs one dict lookup: no
decryption, no parsing. Entries are bounded by an estimate of their memory, not by count
(a session's size follows its tokens, which the provider or a client chooses), and each is
re-checked by the full path after ``REVALIDATE_AFTER`` seconds or at session expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ._gate import Verdict
from ._models import User
from ._session import Session

# The memory the cache may take, estimated from the session cookies' sizes. Small on
# purpose: past it, a request pays the cold path (decrypt, parse), which is cheap, while a
# cache that grows with the number of users is memory that grows with them.
ADMITTED_CACHE_BYTES = 12 * 1024 * 1024
REVALIDATE_AFTER = 60.0
# What an entry costs beside its cookie bytes: the decoded session, its objects, the slot.
ENTRY_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Admitted:
    session: Session
    user: User
    roll: bool
    until: float
    key: bytes
    weight: int
    verdict: Verdict
    #: The optional purposes given (for their current versions), for CONSENT_REQUIRE.
    purposes: frozenset[str]


def entry_weight(cookie_bytes: int) -> int:
    """The entry holds its key (the cookie bytes) and the decoded session, about as big."""
    return 2 * cookie_bytes + ENTRY_OVERHEAD


class AdmissionCache:
    """A least-recently-used map from session cookies to admissions, bounded by weight.

    The standard library's ``OrderedDict`` (a C linked list: moving a hit to the end and
    evicting the oldest are both O(1)) with the weight kept beside it: a hit costs a
    fraction of a ``cachetools`` LRU lookup, and this lookup is the gate's whole cost for
    a known user. (A plain dict evicted from the front slows down as deleted slots pile up
    there: with more users than fit, every request evicts.)"""

    def __init__(self, max_weight: int = ADMITTED_CACHE_BYTES) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[bytes, Admitted] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Admitted | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, entry: Admitted) -> None:
        if entry.weight > self.max_weight:
            return  # larger than the whole budget: served, never cached
        self.pop(entry.key)
        entries = self._entries
        entries[entry.key] = entry
        self.weight += entry.weight
        while self.weight > self.max_weight:
            self.weight -= entries.popitem(last=False)[1].weight

    def pop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.weight -= entry.weight
