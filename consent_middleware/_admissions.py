"""Requests the gate already admitted, remembered by their session cookies.

A consented user's next request with the same cookies costs one dict lookup: no
decryption, no parsing. An entry holds the user and what the gate read of the session,
and the whole session (tokens included) only once a route has asked for it. Entries are
bounded by an estimate of their memory, not by count (claims and tokens are as big as the
provider or a client makes them), and each is re-checked by the full path after
``REVALIDATE_AFTER`` seconds or at session expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from sys import getsizeof
from typing import Any

from starlette.types import Scope

from ._config import Settings
from ._cookies import (
    joined_cookie_header,
    scope_cookies,
    session_cookie_map,
    session_cookies,
    session_value,
)
from ._gate import Verdict, judged
from ._models import User
from ._refresh import SESSION_LOADER_SCOPE_KEY, SESSION_SCOPE_KEY, SessionRefresher
from ._session import CookieSessionStore, Session, SessionStore, SessionSummary

REVALIDATE_AFTER = 60.0
USER_SCOPE_KEY = "consent_middleware.user"
# The admission a request was let through on, for the session loader.
_ADMITTED_SCOPE_KEY = "consent_middleware.admitted"
# What an entry costs beside its user's claims: the User, the Consent, the summary, the
# slot, its hash, tail and times (measured with tracemalloc through the gate: 847 bytes,
# whatever the claims), and each optional purpose's parsed choice (117 bytes).
ENTRY_OVERHEAD = 850
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
    """What an entry takes: a fixed cost, its user's claims as the objects they are, the
    parsed choice of each optional purpose, and the decoded session with its tokens when
    the gate parsed one (about the cookie's size again)."""
    consent = entry.user.consent
    purposes = len(consent.purposes) if consent is not None else 0
    session = cookie_bytes if entry.session is not None else 0
    return ENTRY_OVERHEAD + held_bytes(entry.facts.user) + PURPOSE_OVERHEAD * purposes + session


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
    second miss, and only while the cookies missed since would still fit (a "doorkeeper"
    of the recent misses, bounded by the same weight): that is when least-recently-used
    keeps it long enough to be hit. With more active users than fit, a plain LRU inserts
    and evicts on every request and hits none; this one keeps those it holds and leaves
    the others to the cold path, which then pays no insert, no eviction and no collector
    work for entries that would have died unused.
    """

    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._entries: OrderedDict[int, Admitted] = OrderedDict()
        # Recent misses by digest, with the weight each would have taken.
        self._missed: OrderedDict[int, int] = OrderedDict()
        self._missed_weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Admitted | None:
        """The entry for ``key``, due for its re-check or not."""
        return self.current(key, 0.0)

    def current(self, key: bytes, now: float) -> Admitted | None:
        """The entry for ``key`` unless it is due for its re-check at ``now``."""
        digest = hash(key)
        entry = self._entries.get(digest)
        if entry is None or entry.until < now or key[-KEY_TAIL:] != entry.tail:
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, key: bytes, entry: Admitted) -> None:
        """Remember ``entry`` for ``key`` (or not: see the class); never raises."""
        digest = hash(key)
        entries = self._entries
        # An entry due for its re-check is replaced (as the most recent); a new one goes in
        # while there is room, or once it has been missed recently. A full cache asks the
        # doorkeeper with the average weight: most misses go no further, and weighing an
        # entry (walking its claims) is left to those that go in.
        if digest not in entries and self.weight + ENTRY_OVERHEAD > self.max_weight:
            average = self.weight // len(entries) if entries else 0
            if not self._seen(digest, max(ENTRY_OVERHEAD, average)):
                return
        weight = entry_weight(entry, len(key))
        if weight > self.max_weight:
            return  # larger than the whole budget: served, never cached
        self.discard(entries.get(digest))
        entry.digest, entry.tail, entry.weight = digest, key[-KEY_TAIL:], weight
        entries[digest] = entry
        self.weight += weight
        self._trim()

    def holds(self, key: bytes, entry: Admitted) -> bool:
        """Whether ``entry`` is the one cached for ``key`` (as a hit, it becomes the most
        recent)."""
        return self.get(key) is entry

    def keep_session(self, entry: Admitted, session: Session, cookie_bytes: int) -> None:
        """Keep the full session a route asked for with its admission (an API route
        calling ``get_access_token()`` on every request then parses it once), weighed
        with its tokens."""
        if entry.session is not None:
            return
        entry.session = session
        if self._entries.get(entry.digest) is entry:
            entry.weight += cookie_bytes
            self.weight += cookie_bytes
            self._trim()

    def discard(self, entry: Admitted | None) -> None:
        """Remove ``entry`` if it is the one cached for its cookie."""
        if entry is not None and self._entries.get(entry.digest) is entry:
            del self._entries[entry.digest]
            self.weight -= entry.weight

    def _trim(self) -> None:
        """Evict the least recently used until the weight is within the budget."""
        entries = self._entries
        while self.weight > self.max_weight:
            self.weight -= entries.popitem(last=False)[1].weight

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


class Admissions:
    """The gate's decision for a request's session cookies: the cached one while it is
    current, else the full check (decrypt, summarise, decide) remembered for next time;
    and what an admitted request hands the app."""

    def __init__(self, settings: Settings, sessions: SessionStore, refresher: SessionRefresher):
        self.settings = settings
        self.sessions = sessions
        self.refresher = refresher
        # Bounded by an estimate of the memory its entries take (Settings.admission_cache_mb).
        self.cache = AdmissionCache(settings.admission_cache_mb * 1024 * 1024)
        # The cookie store hands the gate a summary of the session (no tokens parsed, no
        # Session built); any other store, or one that loads its sessions its own way, is
        # asked for the whole session.
        self._summaries: CookieSessionStore | None = None
        if isinstance(sessions, CookieSessionStore) and sessions.summarizes():
            self._summaries = sessions
        # Bound once: a bound method made per request would be an allocation per request.
        self._loader = self._load_session

    async def admitted(self, scope: Scope, now: float) -> Admitted | Verdict:
        """The decision for this request's session cookies. A session that may not pass
        is still returned (with its verdict): a revocation mark may change it."""
        raw = joined_cookie_header(scope)
        key = session_cookies(raw)
        return self.known(key, now) or await self.admit(scope, raw, key, now)

    def known(self, key: bytes, now: float) -> Admitted | None:
        """The cached admission for these session cookies (``session_cookies``) while it
        is current: for a known user, the whole of the gate's work. Not a coroutine, so a
        hit costs no await."""
        return self.cache.current(key, now) if key else None

    async def admit(self, scope: Scope, raw: bytes, key: bytes, now: float) -> Admitted | Verdict:
        """The full check of cookies ``known`` did not answer for: decrypt, summarise,
        decide, and remember the admission for next time."""
        sessions = self.sessions
        session: Session | None = None
        facts: Session | SessionSummary
        summaries = self._summaries
        claim = self.settings.consent_claim
        if summaries is not None:
            # The usual cookie is opened from the request's bytes; anything else (chunks,
            # a value Starlette's parser would strip) through the name -> value mapping.
            value = session_value(key)
            if value is not None:
                found = summaries.summary_of(value)
            else:
                cookies = _session_cookie_map(scope, raw, key)
                found = summaries.summary(cookies) if cookies else None
            if found is None:
                return Verdict.LOGIN
            summary, payload = found
            facts = summary
            roll = summaries.needs_roll(summary, now)
            if roll or claim not in summary.user:
                # Rare: the full session is needed now (to write it, or to read the claim
                # from its ID token).
                session = Session.from_summary(summary, payload)
        else:
            cookies = _session_cookie_map(scope, raw, key)
            session = await sessions.load(cookies) if cookies else None
            if session is None:
                return Verdict.LOGIN
            roll = sessions.needs_roll(session, now)
        if session is not None:
            if claim not in session.user:
                # nextjs-auth0 wrote it with its default claim filter: the claim is read
                # from the session's own ID token (rare; the usual session carries it).
                session = await self.refresher.with_consent_claim(session)
            facts = session
        admitted = self.admission(facts, session, roll, now)
        # Only consented requests are remembered. A session due to roll gets a new cookie
        # on this response; caching the old value would only keep it alive. And only a
        # self-contained store's cookie is the whole session: a server-side store can end
        # a session behind an unchanged cookie.
        if key and admitted.verdict is Verdict.ALLOW and not roll and sessions.self_contained:
            self.cache.put(key, admitted)
        return admitted

    def admission(
        self, facts: Session | SessionSummary, session: Session | None, roll: bool, now: float
    ) -> Admitted:
        settings = self.settings
        user = User.from_claims(facts.user, settings.consent_claim)
        until = now + REVALIDATE_AFTER
        if facts.expires_at:  # 0: a session not written yet (just refreshed)
            until = min(until, facts.ends_at)
        # The claim is parsed once, for the user, the verdict and the purposes alike.
        verdict, purposes = judged(user.consent, settings)
        return Admitted(facts, session, user, roll, until, verdict, purposes)

    def hand_over(self, admitted: Admitted, scope: Scope) -> None:
        """What the app reads of an admitted request: the user, and the session (or how
        to parse it, when the gate read only a summary)."""
        user = scope[USER_SCOPE_KEY] = admitted.user
        state = scope.get("state")
        if state is None:
            scope["state"] = {"user": user}
        else:
            state["user"] = user
        if admitted.session is not None:
            scope[SESSION_SCOPE_KEY] = admitted.session
        else:
            scope[_ADMITTED_SCOPE_KEY] = admitted
            scope[SESSION_LOADER_SCOPE_KEY] = self._loader

    async def _load_session(self, scope: Scope) -> Session | None:
        raw = joined_cookie_header(scope)
        key = session_cookies(raw)
        session = await self.sessions.load(_session_cookie_map(scope, raw, key))
        admitted = scope.get(_ADMITTED_SCOPE_KEY)
        if session is None or not isinstance(admitted, Admitted):
            return None
        # Only the session the request was admitted on (an app that rewrote the scope's
        # headers meanwhile gets none, not someone else's), kept for the very cookie.
        facts = admitted.facts
        if (session.sid, session.issued_at, session.user.get("sub")) != (
            facts.sid, facts.issued_at, facts.user.get("sub"),
        ):  # fmt: skip
            return None
        if self.cache.holds(key, admitted):
            self.cache.keep_session(admitted, session, len(key))
        return session


def _session_cookie_map(scope: Scope, raw: bytes, key: bytes) -> dict[str, str]:
    """The session's own cookies when it has the usual name (no parse of the rest of the
    header); a store of one's own may name its cookie anything: all of them."""
    return session_cookie_map(key, raw) if key else scope_cookies(scope) if raw else {}
