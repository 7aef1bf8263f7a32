"""What the gate adds to the app's responses: the session's ``Set-Cookie`` (a roll or a
refresh during the request), ``Vary: Cookie`` and, with a cookie, ``Cache-Control``."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

from ._cookies import scope_cookies
from ._refresh import REFRESHED_SCOPE_KEY
from ._session import Session, SessionStore

# RFC 9111 5.2.2: whenever the gate sets a cookie, no cache may keep the response.
PRIVATE = b"private, no-store"


class SessionWrite:
    """The ``Set-Cookie`` values for the session this request ends with, computed once."""

    def __init__(
        self, sessions: SessionStore, scope: Scope, session: Session | None, roll: bool
    ) -> None:
        self.sessions = sessions
        self.scope = scope
        self.session = session
        self.roll = roll
        self._done: tuple[Session, list[bytes]] | None = None

    async def values(self) -> list[bytes]:
        # A refresh_session() call during the request wins over a plain roll.
        current = self.scope.get(REFRESHED_SCOPE_KEY)
        if current is None and not self.roll:
            return []
        target = current or self.session
        if target is None:
            return []  # a roll always comes with the session it rolls
        if self._done is None or self._done[0] is not target:
            cookies = scope_cookies(self.scope)
            self._done = (target, await self.sessions.save(target, cookies))
        return self._done[1]


VARY_SPELLINGS = (b"vary", b"Vary")


def with_vary_cookie(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response headers with Cookie in Vary: every Vary field the app sent (RFC 9110
    12.5.5: a list, possibly over several fields) merged into one, Cookie added by token
    unless present or "*"."""
    headers = list(raw)
    fields = [value for name, value in headers if name in VARY_SPELLINGS or name.lower() == b"vary"]
    if not fields:
        headers.append((b"vary", b"Cookie"))
        return headers
    tokens = {token.strip().lower() for field in fields for token in field.split(b",")}
    if tokens & {b"cookie", b"*"}:
        return headers
    merged = b", ".join([*fields, b"Cookie"])
    return [(n, v) for n, v in headers if n.lower() != b"vary"] + [(b"vary", merged)]
