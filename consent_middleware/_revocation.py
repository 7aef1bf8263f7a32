"""Ending sessions everywhere, not only in the browser that asked.

A cookie session lives in the browser, so a logout, a withdrawal or a deletion done in one
browser cannot reach the cookies of the others by itself. Instead the change leaves a mark
in the shared state, and the gate compares every session with the marks on every request:

- logout writes a mark for the session's ``sid``: every copy of that session ends;
- a withdrawal, a deletion or a flag writes a mark for the user's ``sub``: every session of
  that user whose ID token was issued before the mark is *stale*. The gate refreshes it
  (after a withdrawal the new claim sends it to the terms page) or, when the refresh fails
  or the user is gone, ends it. The browser that withdrew already holds a newer ID token.

Marks and ``Session.issued_at`` are Unix milliseconds by this server's clock (when the grant
that produced the session's claims was sent), so a grant sent after a mark is never stale,
whatever the provider's clock says.
"""

from __future__ import annotations

import enum
from typing import Protocol

from ._config import Settings
from ._session import Session, now_ms
from ._state import MarkKind, SharedState


class Revocation(enum.Enum):
    #: Nothing has happened to this session.
    NONE = "none"
    #: Its claims may be out of date: refresh it before letting it through.
    STALE = "stale"
    #: It has been ended: no session.
    ENDED = "ended"


class Revocable(Protocol):
    """What the marks are compared with: a ``Session``, or the gate's admission of one."""

    @property
    def sid(self) -> str: ...

    @property
    def sub(self) -> str: ...

    @property
    def issued_at(self) -> int: ...


class Revocations:
    def __init__(self, settings: Settings, state: SharedState) -> None:
        self.state = state
        self.revalidate_seconds = settings.revalidate_seconds
        # A mark must outlive every session it can concern: none lives longer than this.
        self.mark_lifetime = float(settings.absolute_duration)

    def status(self, session: Revocable, now: float) -> Revocation:
        """Where ``session`` stands; no I/O (the gate asks on every request)."""
        issued_at = session.issued_at
        state = self.state
        if state.has_marks:
            ended = state.mark(MarkKind.SESSION, session.sid)
            if ended is not None and issued_at < ended:
                return Revocation.ENDED
            sub = session.sub
            ended = state.mark(MarkKind.USER_ENDED, sub)
            if ended is not None and issued_at < ended:
                return Revocation.ENDED
            changed = state.mark(MarkKind.USER, sub)
            if changed is not None and issued_at < changed:
                return Revocation.STALE
        if self.revalidate_seconds and issued_at < (now - self.revalidate_seconds) * 1000:
            return Revocation.STALE
        return Revocation.NONE

    def fresh_after(self, session: Session, now: float) -> float:
        """Unix seconds: a grant sent after this brings ``session`` up to date."""
        marked = self.state.mark(MarkKind.USER, session.sub) or 0
        if self.revalidate_seconds:
            return max(marked / 1000, now - self.revalidate_seconds)
        return marked / 1000

    async def end_session(self, sid: str) -> None:
        """Logout: every copy of this session ends."""
        await self.state.publish_mark(MarkKind.SESSION, sid, now_ms(), self.mark_lifetime)

    async def end_user(self, sub: str) -> None:
        """Back-channel logout by subject: every session of this user ends."""
        await self.state.publish_mark(MarkKind.USER_ENDED, sub, now_ms(), self.mark_lifetime)

    async def mark_user(self, sub: str) -> int:
        """A change to the user's consent or account: their older sessions are stale."""
        at = now_ms()
        await self.state.publish_mark(MarkKind.USER, sub, at, self.mark_lifetime)
        return at
