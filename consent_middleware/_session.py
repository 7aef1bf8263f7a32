"""The session (nextjs-auth0 v4 ``__session`` format) and where sessions are stored."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from cachetools import Cache

from . import _jose
from ._config import Settings
from ._cookies import SESSION_COOKIE, CookieWriter, read_chunked
from ._tokens import TokenResponse, TokenSet

# nextjs-auth0 v4's leeway on internal.sessionExpiresAt.
SESSION_EXPIRY_LEEWAY = 30
# Memory the decrypted-session cache may take, estimated from the cookies' sizes.
K = TypeVar("K")
# What a cached entry costs beyond its cookie's characters: objects, dict slots, the key.
ENTRY_OVERHEAD = 1024
# Re-issue the cookie only once this share of the inactivity window has passed, so a
# busy user does not get a fresh encryption and Set-Cookie on every request.
ROLL_FRACTION = 0.1
# Claims about the token itself rather than the user: not worth a place in the cookie.
PROTOCOL_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "azp", "jti", "auth_time"}
)


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in user's session, in nextjs-auth0 v4's shape.

    ``extra`` keeps what a session written elsewhere (nextjs-auth0, a later version of this
    package) carries beyond the fields modelled here, so rolling or refreshing it rewrites
    only what changed and carries every other field through untouched.
    """

    user: dict[str, Any]
    token_set: TokenSet
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    created_at: int = field(default_factory=lambda: int(time.time()))
    # When the stored cookie expires; 0 for a session not yet written.
    expires_at: int = 0
    # When the grant that produced these claims was sent, in Unix milliseconds by this
    # server's clock: the claims are at least this fresh. A revocation mark is compared with
    # it (not with createdAt, which survives a refresh). The provider's ``iat`` would do
    # too, but its clock may run behind ours, and a refresh must never look stale forever.
    issued_at: int = field(default_factory=lambda: now_ms())
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_claims(
        cls, claims: Mapping[str, Any], token_set: TokenSet, issued_at: int | None = None
    ) -> Session:
        session = cls(
            user=user_claims(claims), token_set=token_set, issued_at=issued_at or now_ms()
        )
        # nextjs-auth0 v4 keeps the ID token's sid (the provider's login session) as
        # internal.sid and sends it as logout_hint; back-channel logout names it too.
        sid = claims.get("sid")
        return replace(session, sid=sid) if isinstance(sid, str) and sid else session

    @classmethod
    def from_grant(cls, grant: TokenResponse) -> Session:
        return cls.from_claims(grant.claims, grant.token_set, _ms(grant.requested_at))

    @property
    def sub(self) -> str:
        return str(self.user.get("sub"))

    @property
    def ends_at(self) -> float:
        """When the session ends (see ``ends_at``)."""
        return ends_at(self.expires_at, self.extra.get("internal"))

    def expired(self, now: float) -> bool:
        return self.ends_at < now

    def refreshed(
        self, claims: Mapping[str, Any], token_set: TokenSet, issued_at: int | None = None
    ) -> Session:
        """Same session (sid, createdAt), new claims and tokens."""
        return replace(
            self,
            user=user_claims(claims),
            token_set=token_set,
            issued_at=issued_at or now_ms(),
        )

    def refreshed_by(self, grant: TokenResponse) -> Session:
        return self.refreshed(grant.claims, grant.token_set, _ms(grant.requested_at))

    def to_payload(self) -> dict[str, Any]:
        extra = self.extra
        token_set: dict[str, Any] = {
            **_mapping(extra.get("tokenSet")),
            "accessToken": self.token_set.access_token,
            "idToken": self.token_set.id_token,
            "expiresAt": self.token_set.expires_at,
        }
        for key, value in (
            ("refreshToken", self.token_set.refresh_token),
            ("scope", self.token_set.scope),
            # Not nextjs-auth0's: when the access token was got, for how early to renew it.
            ("issuedAt", self.token_set.issued_at),
        ):
            if value:
                token_set[key] = value
            else:
                token_set.pop(key, None)
        internal = {
            **_mapping(extra.get("internal")),
            "sid": self.sid,
            "createdAt": self.created_at,
            "issuedAt": self.issued_at,
        }
        known = {"user", "tokenSet", "internal", "exp"}
        others = {k: v for k, v in extra.items() if k not in known}
        return {**others, "user": self.user, "tokenSet": token_set, "internal": internal}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Session | None:
        """Parse a decrypted payload; None when its shape is not a session."""
        summary = SessionSummary.from_payload(payload)
        return None if summary is None else cls.from_summary(summary, payload)

    @classmethod
    def from_summary(cls, summary: SessionSummary, payload: Mapping[str, Any]) -> Session:
        """The whole session of a payload already summarised (so already checked)."""
        tokens = payload["tokenSet"]
        return cls(
            user=summary.user,
            token_set=TokenSet(
                access_token=str(tokens.get("accessToken", "")),
                id_token=str(tokens.get("idToken", "")),
                refresh_token=_optional_str(tokens.get("refreshToken")),
                expires_at=int(tokens.get("expiresAt", 0)),
                scope=_optional_str(tokens.get("scope")),
                issued_at=_whole_seconds(tokens.get("issuedAt")),
            ),
            sid=summary.sid,
            created_at=summary.created_at,
            expires_at=summary.expires_at,
            issued_at=summary.issued_at,
            extra=payload,
        )


class SessionSummary:
    """What the gate reads of a session: who, which login, since and until when.

    The cookie store decrypts the whole payload, but the gate needs none of its tokens:
    a summary skips the token set and the ``Session`` (about a third of the gate's work
    for a cookie it has not seen), and the full session is parsed when a route asks for
    it (``get_access_token``, ``refresh_session``) or the cookie is rewritten. It has the
    attributes of ``Session`` that the gate, the rolling expiry and revocation read.
    """

    # A plain class with slots: built on every request the gate has not seen recently.
    __slots__ = ("created_at", "ends_at", "expires_at", "issued_at", "sid", "user")

    def __init__(
        self, user: dict[str, Any], sid: str, created_at: int, expires_at: int, issued_at: int,
        ends_at: float,
    ) -> None:  # fmt: skip
        self.user = user
        self.sid = sid
        self.created_at = created_at
        self.expires_at = expires_at
        self.issued_at = issued_at
        self.ends_at = ends_at

    @property
    def sub(self) -> str:
        return str(self.user.get("sub"))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SessionSummary | None:
        """None when the payload's shape is not a session: the same checks that decide
        whether ``Session.from_payload`` parses it, so the two never disagree."""
        # Built on every request from a user the gate has not seen recently: each field
        # read once, exact types first (what a decoded cookie holds).
        user, tokens, internal = (
            payload.get("user"),
            payload.get("tokenSet"),
            payload.get("internal"),
        )
        if not (isinstance(user, dict) and isinstance(tokens, dict) and isinstance(internal, dict)):
            return None
        if not isinstance(user.get("sub"), str):
            return None
        try:
            int(tokens.get("expiresAt", 0))
            created_at = int(internal["createdAt"])
            expires_at = int(payload["exp"])
            # A session written without it (nextjs-auth0, older versions) counts as issued
            # when it was created: older is the safe side of a revocation mark.
            issued_at = int(internal.get("issuedAt", created_at * 1000))
            return cls(
                user, str(internal["sid"]), created_at, expires_at, issued_at,
                ends_at(expires_at, internal),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


def ends_at(expires_at: int, internal: object) -> float:
    """When a session ends: the cookie's ``exp`` (15 s skew), or sooner
    ``internal.sessionExpiresAt`` (30 s leeway), which nextjs-auth0 v4 sets from the ID
    token's ``session_expiry`` and honours over any ``exp``."""
    ends: float = expires_at + _jose.COOKIE_CLOCK_SKEW
    limit = internal.get("sessionExpiresAt") if isinstance(internal, dict) else None
    if limit is not None and isinstance(limit, int | float):
        ends = min(ends, limit + SESSION_EXPIRY_LEEWAY)
    return ends


def now_ms() -> int:
    return _ms(time.time())


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def user_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in PROTOCOL_CLAIMS}


def weight(cookie_value: str | bytes) -> int:
    """The memory a cache entry for this cookie takes, roughly: decoded claims and tokens
    are a little smaller than their encrypted form, plus a fixed cost per entry."""
    return len(cookie_value) + ENTRY_OVERHEAD


def entry_weight(entry: tuple[Session, int]) -> int:
    """A session cache's ``getsizeof``: the weight stored beside the session."""
    return entry[1]


def remember(
    cache: Cache[K, tuple[Session, int]], key: K, session: Session, value: str | bytes
) -> None:
    """Cache ``session`` under ``key``, weighed by its stored form ``value``; one larger
    than the whole budget is served without being cached."""
    size = weight(value)
    if size <= cache.maxsize:
        cache[key] = (session, size)


class SessionStore(Protocol):
    """Where sessions live; implement it to keep them somewhere else.

    The cookie store keeps each session whole, encrypted, in the browser; a server-side
    store keeps only an id in the cookie. ``cookies`` is always the request's cookies as a
    name -> value mapping; the methods that write return complete ``Set-Cookie`` header
    values for the response. Methods that may do I/O are coroutines.
    """

    #: True when the cookie *is* the session, so an unchanged cookie always means an
    #: unchanged session and the gate may remember its decision by the cookie alone.
    #: A server-side store answers False: it can end a session behind an unchanged cookie.
    self_contained: bool

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        """The request's session, or None when there is none or it is unusable
        (foreign, tampered, expired, ended). Must not raise for bad client input."""
        ...

    async def save(
        self, session: Session, cookies: Mapping[str, str], now: float | None = None
    ) -> list[bytes]:
        """Store ``session`` with a fresh expiry; the ``Set-Cookie`` values that point the
        browser at it (and delete whatever cookie layout they replace)."""
        ...

    async def clear(self, cookies: Mapping[str, str]) -> list[bytes]:
        """End the request's session; the ``Set-Cookie`` values that delete its cookies."""
        ...

    def needs_roll(self, session: Session, now: float | None = None) -> bool:
        """Whether a request now should extend the session (rolling expiry). Pure
        arithmetic on the session, no I/O: the gate asks it on every admitted request."""
        ...

    async def delete_by(self, *, sid: str | None = None, sub: str | None = None) -> int:
        """End every stored session with this ``sid`` or of this ``sub`` (back-channel
        logout, account deletion); how many were ended. A store that keeps sessions only
        in browsers ends none and answers 0: revocation marks end those."""
        ...


class RollingExpiry:
    """nextjs-auth0 v4's rolling expiry: ``min(now + inactivity, createdAt + absolute)``."""

    settings: Settings

    def expiry(self, session: Session | SessionSummary, now: float) -> int:
        absolute = session.created_at + self.settings.absolute_duration
        return int(min(absolute, now + self.settings.inactivity_duration))

    def needs_roll(self, session: Session | SessionSummary, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        gain = self.expiry(session, now) - session.expires_at
        return gain > self.settings.inactivity_duration * ROLL_FRACTION

    def rolls_at(self, session: Session | SessionSummary) -> float:
        """When a request first finds ``session`` due to roll (``needs_roll``): infinity when
        its absolute end leaves no roll worth making."""
        inactivity = self.settings.inactivity_duration
        least = inactivity * ROLL_FRACTION
        if session.created_at + self.settings.absolute_duration - session.expires_at <= least:
            return math.inf
        # The first whole second at which int(now + inactivity) - expires_at > least.
        return math.floor(session.expires_at + least) + 1 - inactivity


# What the gate reads sessions through when a store summarises them (see ``summarizes``).
_SUMMARY_READERS = ("load", "summary", "summary_of")


class CookieSessionStore(RollingExpiry):
    """Encrypted, chunked cookies.

    No cache of its own: the gate remembers each admitted request by its session cookies
    (one cache, not two copies of every session), and everything else that loads a session
    (the consent routes, a roll) is rare enough to decrypt."""

    self_contained = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = [_jose.derive_key(s) for s in settings.secrets]
        self.writer = CookieWriter(secure=settings.secure_cookies)

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        found = self.summary(cookies)
        return None if found is None else Session.from_summary(*found)

    def summarizes(self) -> bool:
        """Whether the gate may read this store's sessions through ``summary`` and
        ``summary_of``: only when those and ``load`` are this class's own (a subclass that
        reads its sessions otherwise, say with a deny-list, is asked for the whole
        session through ``load``)."""
        cls, own = type(self), CookieSessionStore
        return all(getattr(cls, name) is getattr(own, name) for name in _SUMMARY_READERS)

    def summary(
        self, cookies: Mapping[str, str], now: float | None = None
    ) -> tuple[SessionSummary, Mapping[str, Any]] | None:
        """What the gate reads of the request's session, and the decrypted payload a
        ``Session`` is parsed from if the request needs one; None as for ``load``. Not a
        coroutine: the cookie is all there is."""
        value = read_chunked(SESSION_COOKIE, cookies)
        return self.summary_of(value, now) if value else None

    def summary_of(
        self, value: str | bytes, now: float | None = None
    ) -> tuple[SessionSummary, Mapping[str, Any]] | None:
        """``summary`` for the session cookie's whole value (its bytes straight off the
        request, for the gate: no text decoded, no mapping built), as of ``now``."""
        now = time.time() if now is None else now
        payload = _jose.decrypt(value, self.keys, now)
        summary = SessionSummary.from_payload(payload) if payload else None
        if summary is None or summary.ends_at < now:
            return None
        return summary, payload  # type: ignore[return-value]

    async def save(
        self, session: Session, cookies: Mapping[str, str], now: float | None = None
    ) -> list[bytes]:
        now = time.time() if now is None else now
        expires_at = self.expiry(session, now)
        value = _jose.encrypt(session.to_payload(), self.keys[0], expires_at)
        return self.writer.set_chunked(SESSION_COOKIE, value, int(expires_at - now), cookies)

    async def clear(self, cookies: Mapping[str, str]) -> list[bytes]:
        return self.writer.delete_chunked(SESSION_COOKIE, cookies)

    async def delete_by(self, *, sid: str | None = None, sub: str | None = None) -> int:
        # The sessions live in browsers: nothing to delete here. Revocation marks end them.
        return 0


def _whole_seconds(value: object) -> int:
    """A number of seconds another writer may have left out or spelled otherwise: 0 then."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
