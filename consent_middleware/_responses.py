"""What the gate adds to the app's responses: the session's ``Set-Cookie`` (a roll or a
refresh during the request), ``Vary: Cookie`` and, with a cookie, ``Cache-Control``."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

from ._cookies import scope_cookies
from ._refresh import REFRESHED_SCOPE_KEY, SESSION_SCOPE_KEY
from ._session import Session, SessionStore

# RFC 9111 5.2.2: whenever the gate sets a cookie, no cache may keep the response.
PRIVATE = b"private, no-store"


# Whether the admitted session is due to roll, and the Set-Cookie values already computed
# for the session this request ends with (so a sidecar forwarding them and the response
# setting them agree, and the cookie is encrypted once).
ROLL_SCOPE_KEY = "consent_middleware.roll"
WRITTEN_SCOPE_KEY = "consent_middleware.written"


async def session_cookie_values(sessions: SessionStore, scope: Scope) -> list[bytes]:
    """The ``Set-Cookie`` values for the session this request ends with: none unless it
    rolls or was refreshed meanwhile (a refresh wins over a plain roll).

    Everything it needs is in the scope, and nothing in the scope points back at a
    per-request object: a request leaves no reference cycle for the collector.
    """
    current = scope.get(REFRESHED_SCOPE_KEY)
    if current is None and not scope.get(ROLL_SCOPE_KEY):
        return []
    target = current or scope.get(SESSION_SCOPE_KEY)
    if not isinstance(target, Session):
        return []  # a roll always comes with the session it rolls
    done = scope.get(WRITTEN_SCOPE_KEY)
    if done is None or done[0] is not target:
        done = (target, await sessions.save(target, scope_cookies(scope)))
        scope[WRITTEN_SCOPE_KEY] = done
    values: list[bytes] = done[1]
    return values


VARY_SPELLINGS = (b"vary", b"Vary")
_VARY_COOKIE = (b"vary", b"Cookie")


def with_vary_cookie(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response headers with Cookie in Vary: every Vary field the app sent (RFC 9110
    12.5.5: a list, possibly over several fields) merged into one, Cookie added by token
    unless present or "*"."""
    headers = list(raw)
    # Most responses have no Vary: one pass over the names, nothing built.
    for name, _ in headers:
        if len(name) == 4 and (name in VARY_SPELLINGS or name.lower() == b"vary"):
            break
    else:
        headers.append(_VARY_COOKIE)
        return headers
    fields = [value for name, value in headers if name in VARY_SPELLINGS or name.lower() == b"vary"]
    tokens = {token.strip().lower() for field in fields for token in field.split(b",")}
    if tokens & {b"cookie", b"*"}:
        return headers
    merged = b", ".join([*fields, b"Cookie"])
    return [(n, v) for n, v in headers if n.lower() != b"vary"] + [(b"vary", merged)]
