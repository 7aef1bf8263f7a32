"""Cookie reading, writing and chunking (the nextjs-auth0 v4 layout)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http.cookies import SimpleCookie

from starlette.requests import cookie_parser
from starlette.types import Scope

# Browsers cap a cookie at about 4 KB including its attributes; nextjs-auth0 v4 splits
# its session above this many characters into NAME__0, NAME__1, ...
CHUNK_SIZE = 3500
# nextjs-auth0 v4's session cookie (and the prefix of its chunks).
SESSION_COOKIE = "__session"
MAX_CHUNKS = 20


class CookieWriter:
    """Builds ``Set-Cookie`` header values with the package's fixed attributes."""

    def __init__(self, secure: bool, path: str = "/") -> None:
        self.secure = secure
        self.path = path

    def set(self, name: str, value: str, max_age: int) -> bytes:
        cookie: SimpleCookie = SimpleCookie()
        cookie[name] = value
        morsel = cookie[name]
        morsel["path"] = self.path
        morsel["max-age"] = max(0, int(max_age))
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if self.secure:
            morsel["secure"] = True
        return morsel.OutputString().encode("latin-1")

    def delete(self, name: str) -> bytes:
        return self.set(name, "", 0)

    def set_chunked(
        self, name: str, value: str, max_age: int, existing: Mapping[str, str]
    ) -> list[bytes]:
        """Write ``value`` whole or in chunks and delete whatever layout it replaces."""
        if len(value) <= CHUNK_SIZE:
            headers = [self.set(name, value, max_age)]
            keep = {name}
        else:
            parts = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
            headers = [self.set(chunk_name(name, i), part, max_age) for i, part in enumerate(parts)]
            keep = {chunk_name(name, i) for i in range(len(parts))}
        headers += [self.delete(old) for old in chunk_names(name, existing) if old not in keep]
        return headers

    def delete_chunked(self, name: str, existing: Mapping[str, str]) -> list[bytes]:
        return [self.delete(old) for old in chunk_names(name, existing)]


# The session's own names: the whole cookie, or one of its chunks. An app's "__sessionid"
# (or "__session_x") only starts alike: it is the app's cookie, never the session's.
_SESSION_NAME = re.compile(re.escape(SESSION_COOKIE) + r"(?:__\d+)?")


def is_session_cookie_name(name: str) -> bool:
    return _SESSION_NAME.fullmatch(name) is not None


def chunk_name(name: str, index: int) -> str:
    return f"{name}__{index}"


def chunk_names(name: str, cookies: Mapping[str, str]) -> list[str]:
    """Every cookie that belongs to ``name``: the whole one and any chunks."""
    pattern = re.compile(re.escape(name) + r"__(\d+)")
    return [key for key in cookies if key == name or pattern.fullmatch(key)]


def read_chunked(name: str, cookies: Mapping[str, str]) -> str | None:
    """Join ``name`` or its chunks back into one value; a gap in the chunks means none."""
    if name in cookies:
        return cookies[name]
    parts: list[str] = []
    for index in range(MAX_CHUNKS):
        part = cookies.get(chunk_name(name, index))
        if part is None:
            break
        parts.append(part)
    return "".join(parts) or None


# What the gate reads off an ASGI scope: raw bytes, no Headers object (the hot path).
SESSION_PREFIX = SESSION_COOKIE.encode()


def joined_cookie_header(scope: Scope) -> bytes:
    """The request's cookies as one header value.

    RFC 9113 8.2.3: HTTP/2 may split the Cookie header into several fields, to be joined
    with "; ". When it was split, the scope gets the joined header, so the app and every
    cookie reader downstream see all cookies too.
    """
    cookie = None
    for name, value in scope["headers"]:
        if name == b"cookie":
            if cookie is not None:
                return _joined_cookie_header(scope)
            cookie = value
    if cookie is None:
        return b""
    return cookie if type(cookie) is bytes else bytes(cookie)


def _joined_cookie_header(scope: Scope) -> bytes:
    found = [value for name, value in scope["headers"] if name == b"cookie"]
    joined = b"; ".join(bytes(value) for value in found)
    headers = [(name, value) for name, value in scope["headers"] if name != b"cookie"]
    scope["headers"] = [*headers, (b"cookie", joined)]
    return joined


# Marks a key made from Starlette's own parse of an unusual header (never a cookie's start).
_PARSED = b"\x00"
_SPACE, _SEMICOLON, _QUOTE = 0x20, 0x3B, 0x22
# What bytes.strip() removes, as Starlette's str.strip() does for ASCII.
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_UNUSUAL_START = _WHITESPACE | {_QUOTE}
_WHOLE = SESSION_PREFIX + b"="
_CHUNK_PREFIX = SESSION_PREFIX + b"__"


def session_cookies(cookie_header: bytes) -> bytes:
    """The session's cookies alone (b"" when there are none), as a cache key.

    The usual header ("a=1; __session=...; b=2") is read with ``bytes.find``, no split of
    the whole header and one copy of the session's pairs, which the admission cache then
    hashes (well under a microsecond, where a cryptographic digest of a chunked session
    costs several). Anything unusual (a "__session" that does not start a cookie, such as
    "y=x __session=..." inside another value or one after a non-ASCII space, or a quoted
    value) is left to Starlette's parser, the one the routes and the app read
    ``request.cookies`` with: the gate must never admit one session while the app acts on
    another.
    """
    header = cookie_header
    position = header.find(SESSION_PREFIX)
    if position < 0:
        return b""
    end = header.find(b";", position)
    if end < 0:
        end = len(header)
    value = header.find(b"=", position, end) + 1
    # The usual header: one session cookie, first or after "; ", its value neither quoted
    # nor padded. Anything else takes the general reading below.
    if (
        value == position + len(_WHOLE)
        and value < end
        and (position == 0 or header[position - 2 : position] == b"; ")
        and header[value] not in _UNUSUAL_START
        and header[end - 1] not in _WHITESPACE
        and header.find(SESSION_PREFIX, end) < 0
    ):
        return header[position:end]
    return _session_pairs(header, position)


def _session_pairs(header: bytes, position: int) -> bytes:
    parts = []
    while position >= 0:
        if not _starts_a_cookie(header, position):
            return _parsed_key(header)
        end = header.find(b";", position)
        if end < 0:
            end = len(header)
        # Starlette strips each pair's name and value: so do the ends here, in place.
        while end > position and header[end - 1] in _WHITESPACE:
            end -= 1
        equals = header.find(b"=", position, end)
        value = equals + 1
        while 0 < value < end and header[value] in _WHITESPACE:
            value += 1
        if 0 < value < end and header[value] == _QUOTE:
            return _parsed_key(header)
        if _is_session_name(header[position : equals if equals >= 0 else end]):
            parts.append(header[position:end])
        position = header.find(SESSION_PREFIX, end)
    # One pair (the usual, unchunked cookie): join hands back that very object.
    return b";".join(parts)


def _is_session_name(name: bytes) -> bool:
    """``is_session_cookie_name`` for a name as the header has it: bytes compared first
    (the usual names, on the hot path), decoded and stripped as Starlette does only else."""
    if name == SESSION_PREFIX or (name.startswith(_CHUNK_PREFIX) and name[11:].isdigit()):
        return True
    return is_session_cookie_name(name.decode("latin-1").strip())


def _starts_a_cookie(header: bytes, position: int) -> bool:
    """Whether only ASCII spaces stand between ``position`` and the previous ";" (or the
    header's start), which is how Starlette's split-and-strip sees a cookie name begin."""
    index = position - 1
    while index >= 0 and header[index] == _SPACE:
        index -= 1
    return index < 0 or header[index] == _SEMICOLON


def _own_cookies(parsed: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in parsed.items() if is_session_cookie_name(name)}


def _parsed_key(cookie_header: bytes) -> bytes:
    own = _own_cookies(cookie_parser(cookie_header.decode("latin-1")))
    if not own:
        return b""
    # JSON, so no two different sets of cookies can share a key.
    return _PARSED + json.dumps(sorted(own.items())).encode("utf-8")


def session_cookie_map(own: bytes, cookie_header: bytes) -> dict[str, str]:
    """The session's cookies as a name -> value mapping for a session store, from
    ``session_cookies``'s key (the usual header: no parse of the other cookies), or from
    Starlette's parser for a header it left to it."""
    if own.startswith(_PARSED):
        return _own_cookies(cookie_parser(cookie_header.decode("latin-1")))
    whole = _unchunked_value(own)
    if whole is not None:
        # The usual case, one unchunked cookie: no split (strip as Starlette does: the key
        # may end in a non-ASCII space that only str.strip removes).
        return {SESSION_COOKIE: whole.decode("latin-1").strip()}
    found: dict[str, str] = {}
    for pair in own.decode("latin-1").split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            # The last of a repeated name, as Starlette's parser reads it.
            found[name.strip()] = value.strip()
    return found


def canonical_session_pairs(own: bytes, cookie_header: bytes) -> list[bytes] | None:
    """The session's cookies as the gate reads them (``name=value``, one per name), when
    the header holds them another way: a name padded with spaces, or given twice. An app
    behind the sidecar parses cookies its own way (Next.js keeps names as sent; Express
    and Go keep the first of a repeated name, where Starlette keeps the last): it must be
    handed these, never the ambiguous header, or it could act on another session than the
    one the gate admitted. None when the header's session pairs are already these."""
    if session_value(own) is not None:
        return None  # the usual header: one session cookie, name and value as read
    found = session_cookie_map(own, cookie_header)
    pairs = [f"{name}={value}".encode("latin-1") for name, value in found.items()]
    if not own.startswith(_PARSED) and own == b";".join(pairs):
        return None
    return pairs


def has_padded_session_name(cookie_header: bytes) -> bool:
    """Whether a cookie's name is the session's only once spaces around it are stripped
    (``__session =``, a non-ASCII space before it): what Starlette reads as the session and
    a parser that keeps names as sent (Next.js's) as another cookie. Browsers strip cookie
    names, so only a hand-made request carries one."""
    for part in cookie_header.decode("latin-1").split(";"):
        name = part.partition("=")[0].lstrip(" ")
        if name != name.strip() and is_session_cookie_name(name.strip()):
            return True
    return False


def session_value(own: bytes) -> bytes | None:
    """The session cookie's value from ``session_cookies``'s key, in bytes, when it is the
    usual one unchunked cookie and its value is what Starlette's parser reads (nothing its
    strip would remove: ASCII, no space or control character at either end); None
    otherwise, for ``session_cookie_map`` to read."""
    value = _unchunked_value(own)
    if value and value[0] > _SPACE and value[-1] > _SPACE and value.isascii():
        return value
    return None


def _unchunked_value(own: bytes) -> bytes | None:
    """The raw value when ``session_cookies``'s key is the one unchunked session cookie."""
    return own[len(_WHOLE) :] if own.startswith(_WHOLE) and b";" not in own else None


def scope_cookies(scope: Scope) -> dict[str, str]:
    return cookie_parser(joined_cookie_header(scope).decode("latin-1"))


def sets_session_cookie(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the app's answer sets the session itself (then the gate's write stands back)."""
    return any(
        n.lower() == b"set-cookie"
        and v.startswith(SESSION_PREFIX)
        and is_session_cookie_name(v.partition(b"=")[0].decode("latin-1").strip())
        for n, v in headers
    )
