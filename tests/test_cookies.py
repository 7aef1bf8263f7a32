from __future__ import annotations

from http.cookies import SimpleCookie

from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.requests import cookie_parser

from consent_middleware._cookies import (
    CHUNK_SIZE,
    SESSION_COOKIE,
    CookieWriter,
    is_session_cookie_name,
    read_chunked,
    session_cookie_map,
    session_cookies,
    session_value,
    sets_session_cookie,
)


def parse(header: bytes) -> tuple[str, str, str]:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(header.decode())
    ((name, morsel),) = cookie.items()
    return name, morsel.value, header.decode()


def test_attributes_secure_on_https() -> None:
    header = CookieWriter(secure=True).set("__session", "v", 60).decode()
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert "Secure" in header and "Max-Age=60" in header
    assert "Secure" not in CookieWriter(secure=False).set("__session", "v", 60).decode()


def test_small_value_is_one_cookie_and_old_chunks_are_deleted() -> None:
    existing = {"__session__0": "a", "__session__1": "b", "other": "x"}
    headers = CookieWriter(False).set_chunked("__session", "small", 60, existing)
    parsed = [parse(h) for h in headers]
    assert parsed[0][:2] == ("__session", "small")
    deleted = {name for name, _, raw in parsed[1:] if "Max-Age=0" in raw}
    assert deleted == {"__session__0", "__session__1"}


def test_large_value_is_chunked_and_reassembled() -> None:
    value = "x" * (CHUNK_SIZE * 2 + 10)
    headers = CookieWriter(False).set_chunked("__session", value, 60, {"__session": "old"})
    parsed = [parse(h) for h in headers]
    jar = {name: v for name, v, raw in parsed if "Max-Age=0" not in raw}
    assert sorted(jar) == ["__session__0", "__session__1", "__session__2"]
    assert all(len(v) <= CHUNK_SIZE for v in jar.values())
    assert any(name == "__session" and "Max-Age=0" in raw for name, _, raw in parsed)
    assert read_chunked("__session", jar) == value


def test_missing_chunk_reads_as_truncated_prefix_only() -> None:
    # A gap stops the read; the truncated value then fails decryption upstream.
    assert read_chunked("__session", {"__session__0": "a", "__session__2": "c"}) == "a"
    assert read_chunked("__session", {"__session__1": "b"}) is None
    assert read_chunked("__session", {}) is None


_PIECES = st.sampled_from(
    [
        "__session", "__session__0", "__session__1", "__sessionx", "y", "a__session",
        "=", "; ", ";", " ", "\t", "\xa0", "\x85", "\x1c", '"', "AAA", "BBB", "x __session=",
    ]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=14).map("".join))
# What Starlette's strip removes but bytes.strip does not: control separators, NEL, NBSP.
@example("__session=\x1cAAA")
@example("a=1; __session=AAA\xa0")
@example("__session=\x85AAA; y=BBB")
@settings(max_examples=400, deadline=None)
def test_the_gate_reads_the_session_the_routes_read(header: str) -> None:
    # Whatever the header, the session the gate admits is the one Starlette's parser
    # (request.cookies, the routes, the app) hands on: never one session for the gate and
    # another for the app.
    raw = header.encode("latin-1")
    key = session_cookies(raw)
    gate = read_chunked(SESSION_COOKIE, session_cookie_map(key, raw)) if key else None
    routes = read_chunked(SESSION_COOKIE, cookie_parser(header))
    assert gate == routes
    # The usual cookie is opened from the header's bytes: the very value the routes read.
    value = session_value(key) if key else None
    assert value is None or value.decode("ascii") == routes


def test_an_apps_cookie_that_only_starts_like_the_session_is_the_apps() -> None:
    # "__sessionid" (PHP's, and many an app's): never read as the session or its chunk.
    assert is_session_cookie_name("__session") and is_session_cookie_name("__session__12")
    for name in ("__sessionid", "__session_x", "__session__", "__session__1a", "x__session"):
        assert not is_session_cookie_name(name)
    assert session_cookies(b"__sessionid=app; __session=abc") == b"__session=abc"
    assert session_cookies(b"__session=abc; __sessionid=app") == b"__session=abc"
    assert session_cookies(b"__sessionid=app") == b""
    chunked = b"__session__0=a; __sessionid=app; __session__1=b"
    assert session_cookie_map(session_cookies(chunked), chunked) == {
        "__session__0": "a",
        "__session__1": "b",
    }
    assert sets_session_cookie([(b"set-cookie", b"__session=x; Path=/")])
    assert sets_session_cookie([(b"Set-Cookie", b"__session__0=x; Path=/")])
    assert not sets_session_cookie([(b"set-cookie", b"__sessionid=app; Path=/")])
