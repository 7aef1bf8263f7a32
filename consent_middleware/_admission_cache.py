"""The gate's memory of the session cookies it admitted: one entry per cookie, bounded
by an estimate of the memory the entries take.

An entry holds the decision and what revocation compares (sid, sub, when its claims were
issued); the user only once a route has read their claims, and the whole session (tokens
included) only once a route has asked for it. The bound is on memory, not on count: claims
and tokens are as big as the provider or a client makes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from sys import getsizeof
from typing import Any

from ._gate import Verdict
from ._models import User
from ._session import Session, SessionSummary

# What an entry costs (measured with tracemalloc through the gate): the admission, its
# slot, hash, tail and times, beside its sid and sub (weighed as they are): 400 bytes.
# Once a route reads the user, the User and Consent beside their claims: 160 bytes, and
# each optional purpose's parsed choice: 120 bytes.
ENTRY_OVERHEAD = 400
USER_OVERHEAD = 160
PURPOSE_OVERHEAD = 120
# orjson keeps one copy of each key of up to 64 characters that it has met lately (a str
# of 64 ASCII characters takes 113 bytes).
_SHARED_KEY_BYTES = getsizeof("k" * 64)
# An entry is found by a hash of the session's cookies and confirmed by their end (in the
# usual layout the JWE's authentication tag, 128 random-looking bits for every cookie
# written): an entry never holds the cookie itself, whose size follows the tokens. To pass
# as a cached cookie, a different one would need the same hash, which is keyed by a secret
# chosen at start-up (Python's SipHash) and cannot be known without the cached cookie in
# hand; anything else takes the full check, where an altered cookie fails AES-GCM.
KEY_TAIL = 24


class Admitted:
    """The gate's decision for one session cookie, and what a request it admits carries."""

    # A plain class with slots, not a frozen dataclass: it is built on every cold request,
    # and a frozen dataclass sets each field through object.__setattr__.
    __slots__ = (
        "digest", "issued_at", "purposes", "roll", "session", "sid", "sub", "tail", "until",
        "user", "user_weighed", "verdict", "weight",
    )  # fmt: skip

    def __init__(
        self,
        facts: Session | SessionSummary,
        session: Session | None,
        user: User | None,
        roll: bool,
        until: float,
        verdict: Verdict,
        purposes: frozenset[str],
    ) -> None:
        # What revocation marks are compared with, and a loaded session checked against.
        self.sid = facts.sid
        self.sub = facts.sub
        self.issued_at = facts.issued_at
        #: The full session, when the gate parsed one (a roll, a claim read from the ID
        #: token, a server-side store); otherwise parsed when the request needs it.
        self.session = session
        #: The user, once a route has read its claims (or the gate parsed the session):
        #: until then the entry holds no claims, and a route that never reads them (an
        #: API checking only who calls) keeps it a fraction of their size. Set by the
        #: read, in whatever thread the route runs; weighed on the event loop
        #: (``AdmissionCache.weigh_user``), where the cache is only ever changed.
        self.user = user
        self.user_weighed = False
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
    """What an entry takes: a fixed cost, its user once read, the decoded session with its
    tokens when the gate parsed one (about the cookie's size again), and the optional
    purposes given."""
    user = 0 if entry.user is None else user_weight(entry.user)
    session = cookie_bytes if entry.session is not None else 0
    # The purposes given, with CONSENT_REQUIRE (NO_PURPOSES, shared, when none are).
    purposes = getsizeof(entry.purposes) if entry.purposes else 0
    return ENTRY_OVERHEAD + getsizeof(entry.sid) + getsizeof(entry.sub) + user + session + purposes


def user_weight(user: User) -> int:
    """What a user takes: a fixed cost, their claims as the objects they are, and the
    parsed choice of each optional purpose."""
    consent = user.consent
    purposes = len(consent.purposes) if consent is not None else 0
    return USER_OVERHEAD + held_bytes(user.claims) + PURPOSE_OVERHEAD * purposes


def held_bytes(claims: Mapping[str, Any]) -> int:
    """The memory decoded claims hold: every value, list and nested object (``getsizeof``,
    walked without recursion, so no nesting depth can stop it), and every key longer than
    64 characters. Shorter keys are left out: orjson keeps one copy of each it has met
    lately for every document it reads (claims with many keys of their own per
    user are undercounted by up to a third). Within 2 % of tracemalloc's count for flat,
    nested, long-valued, long-keyed and many-valued claims, where a multiple of the JSON's
    length was off by a third to ten times either way."""
    total = 0
    pending: list[object] = [claims]
    while pending:
        value = pending.pop()
        if value is None or value is True or value is False:
            continue  # one object each, shared by every entry
        total += getsizeof(value)
        if isinstance(value, dict):
            pending.extend(value.values())
            total += sum(size for key in value if (size := getsizeof(key)) > _SHARED_KEY_BYTES)
        elif isinstance(value, list):
            pending.extend(value)
    return total


class AdmissionCache:
    """A least-recently-used map from session cookies to admissions, bounded by weight.

    The standard library's ``OrderedDict`` (a C linked list: moving a hit to the end and
    evicting the oldest are both O(1)) with the weight kept beside it: a hit costs a
    fraction of a ``cachetools`` LRU lookup, and this lookup is the gate's whole cost for
    a known user. (A plain dict evicted from the front slows down as deleted slots pile up
    there: with more users than fit, every request evicts.)

    While there is room, every admitted cookie goes in. Once full, a cookie enters on its
    second miss, and only while it is among the recent misses (``RecentMisses``, about as
    many as the cache holds): that is when least-recently-used keeps it long enough to be
    hit. With more active users than fit, a plain LRU inserts and evicts on every request
    and hits none; this one keeps those it holds and leaves the others to the cold path,
    which then pays no insert, no eviction and no collector work for entries that would
    have died unused.
    """

    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[int, Admitted] = OrderedDict()
        self._missed = RecentMisses(max_weight // ENTRY_OVERHEAD)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Admitted | None:
        """The entry for ``key``, due for its re-check or not."""
        return self.current(key, 0.0)

    def current(self, key: bytes, now: float) -> Admitted | None:
        """The entry for ``key`` unless it is due for its re-check at ``now`` (from ``until``
        on)."""
        digest = hash(key)
        entry = self._entries.get(digest)
        if entry is None or entry.until <= now or key[-KEY_TAIL:] != entry.tail:
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, key: bytes, entry: Admitted) -> None:
        """Remember ``entry`` for ``key`` (or not: see the class); never raises."""
        if not self.max_weight:
            return  # turned off (CONSENT_ADMISSION_CACHE_MB=0)
        digest = hash(key)
        entries = self._entries
        # An entry due for its re-check is replaced (as the most recent); a new one goes in
        # while there is room for an average entry, or once it has been missed recently.
        # (Room for the smallest would let every new user in, each evicting the oldest:
        # a plain LRU again.) Most misses of a full cache go no further, and weighing an
        # entry (walking its claims) is left to those that go in.
        if digest not in entries:
            average = max(ENTRY_OVERHEAD, self.weight // len(entries) if entries else 0)
            if self.weight + average > self.max_weight and not self._missed.missed_before(
                digest, len(entries)
            ):
                return
        weight = entry_weight(entry, len(key))
        if weight > self.max_weight:
            return  # larger than the whole budget: served, never cached
        self.discard(entries.get(digest))
        entry.digest, entry.tail, entry.weight = digest, key[-KEY_TAIL:], weight
        entry.user_weighed = entry.user is not None
        entries[digest] = entry
        self.weight += weight
        self._trim()

    def holds(self, key: bytes, entry: Admitted) -> bool:
        """Whether ``entry`` is the one cached for ``key`` (as a hit, it becomes the most
        recent)."""
        return self.get(key) is entry

    def weigh_user(self, entry: Admitted) -> None:
        """Count the user a route read since ``entry`` went in (the next request hands it
        over as it is), if the entry is still cached. Called on the event loop: the read
        itself may run in a worker thread, and only sets ``entry.user``."""
        if entry.user is None or entry.user_weighed:
            return
        entry.user_weighed = True
        if self.is_cached(entry):
            self._grown(entry, user_weight(entry.user))

    def keep_session(self, entry: Admitted, session: Session, cookie_bytes: int) -> None:
        """Keep the full session a route asked for with its admission (an API route
        calling ``get_access_token()`` on every request then parses it once), weighed
        with its tokens."""
        if entry.session is None:
            entry.session = session
            if self.is_cached(entry):
                self._grown(entry, cookie_bytes)

    def is_cached(self, entry: Admitted) -> bool:
        """Whether ``entry`` is the one cached for its cookie."""
        return self._entries.get(entry.digest) is entry

    def _grown(self, entry: Admitted, weight: int) -> None:
        """Count what a cached ``entry`` took on."""
        entry.weight += weight
        self.weight += weight
        self._trim()

    def discard(self, entry: Admitted | None) -> None:
        """Remove ``entry`` if it is the one cached for its cookie."""
        if entry is not None and self.is_cached(entry):
            del self._entries[entry.digest]
            self.weight -= entry.weight

    def _trim(self) -> None:
        """Evict the least recently used until the weight is within the budget."""
        entries = self._entries
        while self.weight > self.max_weight and entries:
            self.weight -= entries.popitem(last=False)[1].weight
        if not entries:
            self.weight = 0  # nothing held weighs nothing, whatever was counted


class RecentMisses:
    """Which cookies a full cache missed lately: two Bloom filters of their digests, the
    newer taking the older's place once it has taken as many misses as the cache holds
    entries, so a miss is remembered for between one and two cache-fulls of misses.

    Bits, not entries: 4 bytes per entry the budget could hold (130 KB for 12 MB), where
    a mapping of digests took 144 bytes per miss, a quarter again on top of the entries.
    A false positive (about 1 %) lets a cookie in on its first miss, evicting the oldest.
    """

    # Three bits per digest, 16 bits per miss a filter takes: 0.5 % false positives each.
    BITS_PER_MISS = 16

    def __init__(self, capacity: int) -> None:
        self.size = max(64, capacity * self.BITS_PER_MISS)
        self._newer = bytearray(self.size // 8 + 1)
        self._older = bytearray(self.size // 8 + 1)
        self._count = 0

    def missed_before(self, digest: int, span: int) -> bool:
        """Whether ``digest`` was missed lately (if not, this miss is remembered).
        ``span``: how many misses the newer filter takes before it ages."""
        # Three positions by double hashing (Kirsch and Mitzenmacher: h1 + i * h2) from
        # SipHash's two halves: as good as three hashes, for any size (on a 64-bit
        # build: a 32-bit one's hash leaves h2 at 1, and more false positives). Asked on
        # every miss of a full cache: unrolled.
        size = self.size
        h1, h2 = digest & 0xFFFFFFFF, (digest >> 32) | 1
        a, b, c = h1 % size, (h1 + h2) % size, (h1 + 2 * h2) % size
        ia, ib, ic = a >> 3, b >> 3, c >> 3
        ma, mb, mc = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7)
        newer, older = self._newer, self._older
        if (newer[ia] & ma and newer[ib] & mb and newer[ic] & mc) or (
            older[ia] & ma and older[ib] & mb and older[ic] & mc
        ):
            return True
        newer[ia] |= ma
        newer[ib] |= mb
        newer[ic] |= mc
        self._count += 1
        if self._count >= span:
            self._older, self._newer = newer, bytearray(len(newer))
            self._count = 0
        return False
