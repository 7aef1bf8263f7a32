"""Sessions kept in Redis; the cookie holds only an encrypted id (``CONSENT_SESSION_STORE=redis``).

The cookie is nextjs-auth0 v4's stateful-store cookie: ``__session`` = JWE (``dir`` +
``A256GCM``, the key derived from ``AUTH0_SECRET``) of ``{"id": ...}``. Key layout, under
the shared state's prefix (default ``consent:``):

- ``session:{id}``  the session payload as JSON (nextjs-auth0's shape, plus ``exp``), expiring
                    with the session; rolling rewrites it with the new expiry;
- ``sid:{sid}``     the ids of the sessions with this provider ``sid`` (a set);
- ``sub:{sub}``     the ids of the sessions of this user (a set);

so a logout by ``sid`` or ``sub`` (back-channel logout) costs one set read and one delete.
A login always gets a new id (no fixation); a roll or a refresh of the same login keeps it.

Each worker keeps what it read for a few seconds; a deletion anywhere is published on the
shared channel and drops the copies at once.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cachetools import LRUCache, TTLCache

from . import _jose
from ._config import Settings
from ._cookies import SESSION_COOKIE, CookieWriter, read_chunked
from ._exceptions import SharedStateError
from ._redis_state import RedisState
from ._session import RollingExpiry, Session, entry_weight, remember

logger = logging.getLogger("consent_middleware")

# How long a worker may answer from what it read, when no deletion message reaches it.
LOCAL_TTL = 5.0
LOCAL_ENTRIES = 20_000
LOCAL_BYTES = 64 * 1024 * 1024
# An id cookie is a few hundred characters; anything much longer is not one of ours.
MAX_ID_COOKIE = 2048


class RedisSessionStore(RollingExpiry):
    self_contained = False

    def __init__(self, settings: Settings, state: RedisState) -> None:
        self.settings = settings
        self.state = state
        self.redis = state.redis
        self.keys = [_jose.derive_key(s) for s in settings.secrets]
        self.writer = CookieWriter(secure=settings.secure_cookies)
        # Bounded in bytes (estimated from the stored JSON): sessions are as big as their
        # tokens, which the provider chooses.
        self._local: TTLCache[str, tuple[Session, int]] = TTLCache(
            LOCAL_BYTES, ttl=LOCAL_TTL, getsizeof=entry_weight
        )
        # Cookie value -> (id, cookie expiry): decrypting the id costs more than the rest of
        # a request. A cookie is small (~200 bytes), so entries are bounded by count.
        self._ids: LRUCache[str, tuple[str, int]] = LRUCache(LOCAL_ENTRIES)
        state.listen(self._on_message)

    def _key(self, *parts: str) -> str:
        return self.state.prefix + ":".join(parts)

    def _id(self, cookies: Mapping[str, str]) -> str | None:
        value = read_chunked(SESSION_COOKIE, cookies)
        if not value or len(value) > MAX_ID_COOKIE:
            return None
        known = self._ids.get(value)
        if known is not None:
            if known[1] + _jose.COOKIE_CLOCK_SKEW >= time.time():
                return known[0]
            del self._ids[value]
            return None
        payload = _jose.decrypt(value, self.keys)
        session_id = payload.get("id") if payload else None
        if not (payload and isinstance(session_id, str) and session_id):
            return None
        self._ids[value] = (session_id, int(payload["exp"]))
        return session_id

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        session_id = self._id(cookies)
        if session_id is None:
            return None
        cached = self._local.get(session_id)
        if cached is not None:
            session = cached[0]
        else:
            raw = await self.state.call(self.redis.get(self._key("session", session_id)))
            parsed = _parse(raw)
            if parsed is None or raw is None:
                return None
            session = parsed
            remember(self._local, session_id, session, raw)
        if session.expired(time.time()):
            return None
        return session

    async def save(
        self, session: Session, cookies: Mapping[str, str], now: float | None = None
    ) -> list[bytes]:
        now = time.time() if now is None else now
        expires_at = self.expiry(session, now)
        stored = replace(session, expires_at=expires_at)
        previous = self._id(cookies)
        session_id = previous if previous and await self._same_login(previous, stored) else None
        session_id = session_id or secrets.token_urlsafe(24)
        ttl_ms = max(1, int((expires_at - now) * 1000))
        lifetime_ms = self.settings.absolute_duration * 1000
        sub = session.sub
        document = json.dumps({**stored.to_payload(), "exp": expires_at})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("session", session_id), document, px=ttl_ms)
            for index in (self._key("sid", stored.sid), self._key("sub", sub)):
                pipe.sadd(index, session_id)
                pipe.pexpire(index, lifetime_ms)
            if previous and previous != session_id:
                pipe.delete(self._key("session", previous))
            await self.state.call(pipe.execute())
        remember(self._local, session_id, stored, document)
        if previous:
            # Other workers may hold the version this one replaces: they drop it now.
            await self._announce(sorted({previous, session_id}))
        value = _jose.encrypt({"id": session_id}, self.keys[0], expires_at)
        return self.writer.set_chunked(SESSION_COOKIE, value, int(expires_at - now), cookies)

    async def _same_login(self, session_id: str, session: Session) -> bool:
        """Whether ``session_id`` holds this very login (same sid, same createdAt)."""
        cached = self._local.get(session_id)
        if cached is not None:
            current: Session | None = cached[0]
        else:
            raw = await self.state.call(self.redis.get(self._key("session", session_id)))
            current = _parse(raw)
        return (
            current is not None
            and current.sid == session.sid
            and current.created_at == session.created_at
        )

    async def clear(self, cookies: Mapping[str, str]) -> list[bytes]:
        session_id = self._id(cookies)
        if session_id is not None:
            await self._delete([session_id])
        return self.writer.delete_chunked(SESSION_COOKIE, cookies)

    async def delete_by(self, *, sid: str | None = None, sub: str | None = None) -> int:
        indexes = [self._key("sid", sid)] if sid else []
        indexes += [self._key("sub", sub)] if sub else []
        if not indexes:
            return 0
        members = await self.state.call(self.redis.sunion(indexes))
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        await self._delete(ids)
        return len(ids)

    async def _delete(self, ids: list[str]) -> None:
        if not ids:
            return
        await self.state.call(self.redis.delete(*(self._key("session", i) for i in ids)))
        for session_id in ids:
            self._local.pop(session_id, None)
        await self._announce(ids)

    async def _announce(self, ids: list[str]) -> None:
        """Tell the other workers these sessions changed or ended."""
        try:
            await self.state.publish({"type": "sessions-changed", "ids": ids})
        except SharedStateError as exc:
            # Written in Redis already; other workers drop their copies within LOCAL_TTL.
            logger.warning("could not announce changed sessions: %s", exc)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "sessions-changed":
            for session_id in message.get("ids", []):
                self._local.pop(str(session_id), None)


def _parse(raw: bytes | str | None) -> Session | None:
    if raw is None:
        return None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return Session.from_payload(payload) if isinstance(payload, dict) else None
