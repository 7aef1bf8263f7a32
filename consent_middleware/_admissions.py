"""The gate's decision for a request's session cookies, and what it hands the app.

A consented user's next request with the same cookies costs one lookup in the admission
cache: no decryption, no parsing. Anything else takes the full check (decrypt, summarise,
decide), remembered for next time; each entry is re-checked by the full check after
``REVALIDATE_AFTER`` seconds or at session expiry.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.types import Scope

from ._admission_cache import AdmissionCache, Admitted
from ._config import Settings
from ._cookies import (
    joined_cookie_header,
    scope_cookies,
    session_cookie_map,
    session_cookies,
    session_value,
)
from ._exceptions import ConsentMiddlewareError
from ._gate import Verdict, judged, judged_claim
from ._models import User
from ._refresh import SESSION_LOADER_SCOPE_KEY, SESSION_SCOPE_KEY, SessionRefresher
from ._session import CookieSessionStore, RollingExpiry, Session, SessionStore, SessionSummary

REVALIDATE_AFTER = 60.0
USER_SCOPE_KEY = "consent_middleware.user"
# The admission a request was let through on, for the session loader.
_ADMITTED_SCOPE_KEY = "consent_middleware.admitted"
# The claims the full check decoded from a request's cookie, for its user.
_CLAIMS_SCOPE_KEY = "consent_middleware.claims"


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
        # A rolling session is written anew by the first request that finds it due: an
        # admission must not outlive that moment, or a short inactivity window would end
        # the session of a user active all along.
        self._rolling = sessions if isinstance(sessions, RollingExpiry) else None
        # Bound once: a bound method made per request would be an allocation per request.
        self._loader = self._load_session
        self._user_reader = self._read_user

    async def admitted(
        self, scope: Scope, raw: bytes, key: bytes, now: float
    ) -> Admitted | Verdict:
        """The decision for this request's session cookies (``raw``, the Cookie header,
        and ``key``, its session cookies). A session that may not pass is still returned
        (with its verdict): a revocation mark may change it."""
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
                found = summaries.summary_of(value, now)
            else:
                cookies = _session_cookie_map(scope, raw, key)
                found = summaries.summary(cookies, now) if cookies else None
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
                # For this request's user, should a route read the claims.
                scope[_CLAIMS_SCOPE_KEY] = summary.user
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
        until = now + REVALIDATE_AFTER
        if facts.expires_at:  # 0: a session not written yet (just refreshed)
            until = min(until, facts.ends_at)
            if self._rolling is not None:
                until = min(until, self._rolling.rolls_at(facts))
        # With the session parsed, its user is kept (its claims are held anyway); else
        # the claim is read for the verdict and the purposes alone.
        user = None
        if session is not None:
            user = User.from_claims(session.user, settings.consent_claim)
            verdict, purposes = judged(user.consent, settings)
        else:
            verdict, purposes = judged_claim(facts.user.get(settings.consent_claim), settings)
        return Admitted(facts, session, user, roll, until, verdict, purposes)

    def hand_over(
        self, admitted: Admitted, scope: Scope, raw: bytes, key: bytes, now: float
    ) -> None:
        """What the app reads of an admitted request: the user, and the session (or how
        to parse it, when the gate read only a summary)."""
        user = admitted.user
        # The claims this request's cookie holds, if ``admit`` decoded them (a cold one).
        claims = scope.pop(_CLAIMS_SCOPE_KEY, None)
        if user is None:
            if claims is not None and not self.cache.is_cached(admitted):
                # Not cached (past the budget): nothing to learn for a next request.
                user = User.from_claims(claims, self.settings.consent_claim)
            else:
                # Read if a route asks: from these claims, a session a route parsed,
                # or else once from the cookie.
                read = partial(self._user_reader, admitted, raw, key, claims, now)
                user = User.deferred(admitted.sub, read)
        elif not admitted.user_weighed:
            self.cache.weigh_user(admitted)  # read by a route since the entry went in
        scope[USER_SCOPE_KEY] = user
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

    def _read_user(
        self, admitted: Admitted, raw: bytes, key: bytes, claims: dict[str, Any] | None, now: float
    ) -> User:
        """The user of a request admitted without one, when a route first reads it: from
        the claims ``admit`` decoded, the session a route had parsed, or the very cookie
        the entry was found by (decrypted again as of ``now``, when the entry was current
        and so the cookie unexpired); kept with the entry for its next requests."""
        if admitted.user is not None:
            return admitted.user
        if claims is None and admitted.session is not None:
            claims = admitted.session.user
        if claims is None and self._summaries is not None:
            value = session_value(key)
            if value is not None:
                found = self._summaries.summary_of(value, now)
            else:
                found = self._summaries.summary(session_cookie_map(key, raw), now)
            if found is not None and _same_session(admitted, found[0]):
                claims = found[0].user
        if claims is None:
            # The same bytes and keys as when admitted: only another session could differ.
            raise ConsentMiddlewareError("the session this request was admitted on is gone")
        user = User.from_claims(claims, self.settings.consent_claim)
        # One store, no change to the cache: a sync route reads in a worker thread. The
        # gate weighs it on the event loop once the route is done (or at the next
        # hand-over, for a read after the response).
        admitted.user = user
        return user

    async def _load_session(self, scope: Scope) -> Session | None:
        raw = joined_cookie_header(scope)
        key = session_cookies(raw)
        session = await self.sessions.load(_session_cookie_map(scope, raw, key))
        admitted = scope.get(_ADMITTED_SCOPE_KEY)
        if session is None or not isinstance(admitted, Admitted):
            return None
        # Only the session the request was admitted on (an app that rewrote the scope's
        # headers meanwhile gets none, not someone else's), kept for the very cookie.
        if not _same_session(admitted, session):
            return None
        if self.cache.holds(key, admitted):
            self.cache.keep_session(admitted, session, len(key))
        return session


def _same_session(admitted: Admitted, session: Session | SessionSummary) -> bool:
    """Whether ``session`` is the one ``admitted`` was decided on (and not a session the
    app put in the scope's headers meanwhile)."""
    return (session.sid, session.issued_at, session.sub) == (
        admitted.sid, admitted.issued_at, admitted.sub,
    )  # fmt: skip


def _session_cookie_map(scope: Scope, raw: bytes, key: bytes) -> dict[str, str]:
    """The session's own cookies when it has the usual name (no parse of the rest of the
    header); a store of one's own may name its cookie anything: all of them."""
    return session_cookie_map(key, raw) if key else scope_cookies(scope) if raw else {}
