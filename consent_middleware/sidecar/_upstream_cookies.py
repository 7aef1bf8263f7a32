"""The Cookie header an upstream reads: the session as the gate last wrote it (a roll, a
refresh), or as the gate read it where the browser's header holds it ambiguously; every
other cookie as it came."""

from __future__ import annotations

from .._cookies import canonical_session_pairs, is_session_cookie_name, session_cookies


def as_admitted(cookie_header: bytes) -> list[bytes]:
    """The session's cookies as the gate read them, when the Cookie header holds them
    ambiguously (``canonical_session_pairs``); none otherwise."""
    return canonical_session_pairs(session_cookies(cookie_header), cookie_header) or []


def with_new_session(
    headers: list[tuple[bytes, bytes]], set_cookies: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """The request's Cookie header with the session replaced by what is being set
    (``Set-Cookie`` values): old chunks gone, new ones in, other cookies untouched."""
    if not set_cookies:
        return headers
    fresh = []
    for value in set_cookies:
        pair = value.split(b";", 1)[0]
        if b"max-age=0" not in value.lower() and pair.split(b"=", 1)[1]:
            fresh.append(pair)
    return with_session_pairs(headers, fresh)


def with_session_pairs(
    headers: list[tuple[bytes, bytes]], pairs: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """The request's Cookie header with the session's pairs replaced by ``pairs``
    (``name=value``), the other cookies untouched."""
    # Every pair the gate counts as the session's (its name stripped as Starlette strips
    # it, non-ASCII spaces too) goes: the upstream reads only the session's new pairs.
    kept = [
        part.strip()
        for name, value in headers
        if name == b"cookie"
        for part in value.split(b";")
        if part.strip()
        and not is_session_cookie_name(part.decode("latin-1").partition("=")[0].strip())
    ]
    others = [(n, v) for n, v in headers if n != b"cookie"]
    return [*others, (b"cookie", b"; ".join([*kept, *pairs]))]
