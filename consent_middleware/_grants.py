"""One refresh-token grant per session at a time, across every worker that shares state.

With rotating refresh tokens, two grants that spend the same token cannot both succeed (and
a provider with reuse detection revokes the whole family), so a session's grants take a
lock in the shared state, and each leaves a record of what it spent and what it got:

- a request that arrived while a grant ran (it waited on the lock) takes that grant's
  result, or its failure, instead of spending the token again;
- a request that arrives later holding the token a grant rotated away takes that result for
  a short while (its cookie was sent before the new one reached the browser), and when the
  result is too old for it, continues from the token that grant handed out;
- otherwise it makes its own grant. ``not_before`` lets a caller that just changed the
  user's record refuse any result of a grant sent before the change.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import _jose
from ._exceptions import RefreshError, SharedStateError
from ._session import Session
from ._state import SharedState

logger = logging.getLogger("consent_middleware")

# How long a grant's record is kept: rotated-away tokens are served from it this long.
RECORD_TTL = 30.0

Grant = Callable[[Session, str], Awaitable[Session]]


@dataclass(frozen=True)
class GrantRecord:
    #: SHA-256 of the refresh token the grant spent (the token itself is never stored).
    spent: str
    started: float
    finished: float
    rotated: bool
    #: None when the grant failed.
    session: Session | None

    def serves(self, spent: str, not_before: float, arrived: float, now: float) -> bool:
        """Whether a request that arrived at ``arrived`` holding ``spent`` takes this result."""
        if self.spent != spent or self.started < not_before:
            return False
        if arrived <= self.finished:
            return True  # it was waiting on this very grant
        if self.session is None or now - self.finished >= RECORD_TTL:
            return False
        # A rotated token is dead: its holder must take the result. A caller that named how
        # fresh the claims must be (a second tab folded into an accept) is served by any
        # grant sent after that moment, rotation or not: one grant, not one per tab.
        return self.rotated or not_before > 0

    def successor(self, spent: str) -> Session | None:
        """The session this grant made from the token ``spent``, if it rotated it."""
        return self.session if self.rotated and self.spent == spent else None


class Grants:
    def __init__(self, state: SharedState, secret: str) -> None:
        self.state = state
        # A key of its own: records hold tokens, sealed like the session cookie itself.
        self.key = _jose.derive_key(secret, info=b"consent_middleware grant record")

    async def refresh(self, session: Session, not_before: float, grant: Grant) -> Session:
        token = session.token_set.refresh_token
        if not token:
            raise RefreshError("the session holds no refresh token")
        arrived = time.time()
        async with self.state.lock(f"grant:{session.sid}"):
            record = await self._load(session.sid)
            if record is not None:
                spent = _digest(token)
                if record.serves(spent, not_before, arrived, time.time()):
                    if record.session is None:
                        raise RefreshError("the refresh-token grant this request waited on failed")
                    return record.session
                successor = record.successor(spent)
                if successor is not None and successor.token_set.refresh_token:
                    # Our token is dead; the claims it was traded for are too old for us.
                    session = successor
                    token = successor.token_set.refresh_token
            return await self._run(session, token, grant)

    async def _run(self, session: Session, token: str, grant: Grant) -> Session:
        started = time.time()
        try:
            refreshed = await grant(session, token)
        except RefreshError:
            failed = GrantRecord(_digest(token), started, time.time(), False, None)
            await self._save(session.sid, failed)
            raise
        rotated = refreshed.token_set.refresh_token != token
        record = GrantRecord(_digest(token), started, time.time(), rotated, refreshed)
        await self._save(session.sid, record)
        return refreshed

    async def _load(self, sid: str) -> GrantRecord | None:
        blob = await self.state.get_blob(f"grant:{sid}")
        payload = _jose.decrypt(blob.decode("ascii"), [self.key]) if blob else None
        if payload is None:
            return None
        sealed = payload.get("session")
        session = Session.from_payload(sealed) if isinstance(sealed, dict) else None
        return GrantRecord(
            spent=str(payload["spent"]),
            started=float(payload["started"]),
            finished=float(payload["finished"]),
            rotated=bool(payload["rotated"]),
            session=session,
        )

    async def _save(self, sid: str, record: GrantRecord) -> None:
        session = record.session
        payload = {
            "spent": record.spent,
            "started": record.started,
            "finished": record.finished,
            "rotated": record.rotated,
            "session": {**session.to_payload(), "exp": session.expires_at} if session else None,
        }
        sealed = _jose.encrypt(payload, self.key, int(time.time() + RECORD_TTL) + 1)
        try:
            await self.state.put_blob(f"grant:{sid}", sealed.encode("ascii"), RECORD_TTL)
        except SharedStateError as exc:
            # The grant is done and its result goes back to this request; other requests
            # for the session merely lose the chance to share it.
            logger.warning("could not record a refresh-token grant: %s", exc)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
