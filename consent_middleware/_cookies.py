"""Cookie reading, writing and chunking (the nextjs-auth0 v4 layout)."""

from __future__ import annotations

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
    found = [value for name, value in scope["headers"] if name == b"cookie"]
    if len(found) == 1:
        value = found[0]
        return value if type(value) is bytes else bytes(value)
    if not found:
        return b""
    joined = b"; ".join(bytes(value) for value in found)
    headers = [(name, value) for name, value in scope["headers"] if name != b"cookie"]
    scope["headers"] = [*headers, (b"cookie", joined)]
    return joined


def session_cookies(cookie_header: bytes) -> tuple[bytes, int]:
    """The session's cookies alone (b"" when there are none), and their size.

    Every ``__session*`` pair is found with ``bytes.find`` (no split of the whole header):
    a match inside another cookie's value only adds to the key, so two requests share a key
    only when they carry the same session cookies. The bytes themselves are the cache key:
    a dict hashes them in well under a microsecond and compares them in full, where a
    cryptographic digest of a chunked session costs several.
    """
    position = cookie_header.find(SESSION_PREFIX)
    if position < 0:
        return b"", 0
    parts = []
    while position >= 0:
        end = cookie_header.find(b";", position)
        if end < 0:
            end = len(cookie_header)
        # Only at a cookie's start: "x=a__session=b" is x's value, not a session cookie.
        if position == 0 or cookie_header[position - 1] in b"; \t":
            parts.append(cookie_header[position:end].rstrip())
        position = cookie_header.find(SESSION_PREFIX, end)
    own = b";".join(parts)
    return own, len(own)


def session_cookie_map(own: bytes) -> dict[str, str]:
    """``session_cookies``'s bytes as a name -> value mapping, for a session store: the
    session's cookies alone, without parsing every other cookie of the request."""
    found: dict[str, str] = {}
    for pair in own.decode("latin-1").split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            # The last of a repeated name, as Starlette's cookie parser (request.cookies)
            # reads it: the gate and the routes must see the same session.
            found[name.strip()] = value.strip()
    return found


def scope_cookies(scope: Scope) -> dict[str, str]:
    return cookie_parser(joined_cookie_header(scope).decode("latin-1"))


def sets_session_cookie(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n.lower() == b"set-cookie" and v.startswith(SESSION_PREFIX) for n, v in headers)
