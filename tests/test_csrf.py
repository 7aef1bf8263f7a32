"""The consent forms' CSRF check: a token bound to the session, and a same-origin request."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from consent_middleware import Session, TokenSet
from consent_middleware._csrf import CSRF
from consent_middleware._jose import derive_key
from tests.conftest import make_settings

SECRET = "c" * 40
APP = "https://app.example.com"


def session(sid: str = "sid-1") -> Session:
    return Session(user={"sub": "auth0|user1"}, token_set=TokenSet("at", "idt", "rt", 0), sid=sid)


def request(**headers: str) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "server": ("app.example.com", 443),
        "path": "/consent",
        "raw_path": b"/consent",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


@pytest.fixture
def csrf() -> CSRF:
    return CSRF(SECRET, APP)


def test_the_session_own_token_from_its_own_origin_passes(csrf: CSRF) -> None:
    mine = session()
    assert csrf.check(request(origin=APP), mine, csrf.token(mine))


def test_the_token_is_bound_to_the_session_id(csrf: CSRF) -> None:
    mine, theirs = session("sid-1"), session("sid-2")
    assert csrf.token(mine) != csrf.token(theirs)
    assert not csrf.check(request(origin=APP), mine, csrf.token(theirs))
    # A refresh keeps the sid (new claims and tokens): the page's token stays good.
    refreshed = replace(mine, user={"sub": "auth0|user1", "email": "new@example.com"})
    assert csrf.check(request(origin=APP), refreshed, csrf.token(mine))


def test_without_origin_a_same_origin_referer_is_accepted(csrf: CSRF) -> None:
    mine = session()
    same = request(referer=f"{APP}/consent?returnTo=%2Fdashboard")
    assert csrf.check(same, mine, csrf.token(mine))


@pytest.mark.parametrize(
    "referer",
    [
        "https://evil.example/consent",
        "http://app.example.com/consent",  # another scheme is another origin
        "https://app.example.com:8443/consent",  # and so is another port
        "https://app.example.com.evil.example/consent",
    ],
)
def test_without_origin_a_foreign_referer_is_refused(csrf: CSRF, referer: str) -> None:
    mine = session()
    assert not csrf.check(request(referer=referer), mine, csrf.token(mine))


def test_neither_origin_nor_referer_is_refused(csrf: CSRF) -> None:
    mine = session()
    assert not csrf.same_origin(request())
    assert not csrf.check(request(), mine, csrf.token(mine))


def test_origin_null_is_refused(csrf: CSRF) -> None:
    # Sandboxed frames and some redirects send "null"; it names no origin at all.
    mine = session()
    assert not csrf.check(request(origin="null"), mine, csrf.token(mine))
    # Nor does a same-origin Referer rescue it: Origin, when sent, decides.
    both = request(origin="null", referer=f"{APP}/consent")
    assert not csrf.check(both, mine, csrf.token(mine))


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://app.example.com", f"{APP}:8443", f"{APP}/"]
)
def test_a_foreign_origin_with_a_valid_token_is_refused(csrf: CSRF, origin: str) -> None:
    mine = session()
    assert not csrf.check(request(origin=origin), mine, csrf.token(mine))


# The right value in the wrong shape (an upload, bytes, a list) or no value at all.
@pytest.mark.parametrize(
    "shape",
    [
        lambda token: None,
        lambda token: token.encode(),
        lambda token: [token],
        lambda token: UploadFile(io.BytesIO(token.encode()), filename="csrf_token"),
    ],
    ids=["missing", "bytes", "list", "upload"],
)
def test_a_token_that_is_not_a_string_is_refused(
    csrf: CSRF, shape: Callable[[str], object]
) -> None:
    mine = session()
    assert not csrf.check(request(origin=APP), mine, shape(csrf.token(mine)))


def test_an_empty_or_altered_token_is_refused(csrf: CSRF) -> None:
    mine = session()
    token = csrf.token(mine)
    altered = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert not csrf.check(request(origin=APP), mine, "")
    assert not csrf.check(request(origin=APP), mine, altered)


def test_tokens_differ_between_secrets() -> None:
    mine = session()
    one, other = CSRF(SECRET, APP), CSRF("d" * 40, APP)
    assert one.token(mine) != other.token(mine)
    assert not other.check(request(origin=APP), mine, one.token(mine))


def test_the_origin_ignores_the_app_base_path() -> None:
    mounted = CSRF(SECRET, f"{APP}/shop")
    mine = session()
    assert mounted.origin == APP
    assert mounted.check(request(origin=APP), mine, mounted.token(mine))


def test_the_token_key_is_not_the_cookie_key(csrf: CSRF) -> None:
    # A key of its own: a token says nothing about the key that seals the session cookie.
    assert csrf.key != derive_key(SECRET)
    assert len(csrf.token(session())) == 64  # HMAC-SHA256, hex


def test_a_non_ascii_token_is_refused_not_an_error(csrf: CSRF) -> None:
    # Form fields are whatever the client sends; hmac.compare_digest raises TypeError for
    # str arguments outside ASCII, which must end as a refusal, not an exception.
    mine = session()
    assert not csrf.check(request(origin=APP), mine, "é" * 64)


@pytest.mark.parametrize("base", ["https://app.example.com:443", "https://App.Example.com"])
def test_the_origin_is_compared_as_browsers_serialise_it(base: str) -> None:
    # Settings accept these spellings of the app's URL; browsers send the origin with the
    # host in lower case and without the scheme's default port (RFC 6454 6.1).
    settings = make_settings(app_base_url=base)
    csrf = CSRF(settings.secret, settings.app_base_url)
    mine = session()
    assert csrf.check(request(origin="https://app.example.com"), mine, csrf.token(mine))
