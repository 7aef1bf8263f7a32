"""The accessTokens list without a provider: entry shape, lookup, the cookie bound, the
audience checks (real encryption for the sizes)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from consent_middleware import AccessTokenError, Session, TokenSet
from consent_middleware._audiences import (
    COOKIE_HEADER_LIMIT,
    AudienceToken,
    bounded,
    check_audience,
    cookie_header_length,
    entries,
    find,
    stored,
    token_audiences,
)
from consent_middleware._session import CookieSessionStore
from tests.conftest import make_settings

STORE = CookieSessionStore(make_settings())


def session() -> Session:
    return Session.from_claims(
        {"sub": "auth0|u"}, TokenSet("at-main", "id.t", "rt", int(time.time()) + 60, "openid")
    )


def token(audience: str, size: int = 10, expires_in: int = 600) -> AudienceToken:
    return AudienceToken("x" * size, audience, int(time.time()) + expires_in, "read", "openid")


def test_entries_have_nextjs_auth0s_shape_and_replace_their_own_kind() -> None:
    current = stored(session(), token("https://a", 5))
    current = stored(current, token("https://b", 6))
    current = stored(current, token("https://a", 7))  # renewed: now the newest
    assert [e["audience"] for e in entries(current)] == ["https://b", "https://a"]
    assert entries(current)[1] == {
        "accessToken": "xxxxxxx",
        "expiresAt": entries(current)[1]["expiresAt"],
        "audience": "https://a",
        "scope": "read",
        "requestedScope": "openid",
    }
    assert find(current, "https://a", "openid") == token("https://a", 7)
    assert find(current, "https://a", "openid email") is None
    assert find(current, "https://c", None) is None
    # Foreign or broken entries are skipped, never fatal.
    assert AudienceToken.from_entry({"accessToken": 1}) is None
    assert AudienceToken.from_entry("nope") is None


def test_the_cookie_header_stays_under_8_kb_oldest_dropped_first() -> None:
    current = session()
    for index in range(6):
        current = stored(current, token(f"https://api{index}", 1500))
    others = {"theme": "dark", "__session": "old"}
    kept = bounded(current, STORE, others)
    audiences = [e["audience"] for e in entries(kept)]
    assert audiences == [f"https://api{i}" for i in range(6 - len(audiences), 6)]
    assert 0 < len(audiences) < 6
    assert cookie_header_length(STORE, kept, others) < COOKIE_HEADER_LIMIT
    assert kept.token_set == current.token_set  # the session's own tokens stay


def test_expired_tokens_go_first_and_one_too_big_for_any_room_goes_too() -> None:
    current = stored(session(), token("https://old", 10, expires_in=-5))
    current = stored(current, token("https://live", 10))
    assert [e["audience"] for e in entries(bounded(current, STORE, {}))] == ["https://live"]
    huge = stored(session(), token("https://huge", 9000))
    assert entries(bounded(huge, STORE, {})) == []


def _jwt(claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{body}.sig"


def test_a_jwt_access_tokens_audiences_are_read() -> None:
    assert token_audiences(_jwt({"aud": "https://a"})) == ["https://a"]
    assert token_audiences(_jwt({"aud": ["https://a", "https://u"]})) == ["https://a", "https://u"]
    assert token_audiences(_jwt({"aud": 5})) is None
    assert token_audiences("opaque") is None
    assert token_audiences("a.!!!.c") is None


@pytest.mark.parametrize("audience", ["", "x" * 513, "bad\naudience"])
def test_audiences_that_may_not_be_sent(audience: str) -> None:
    with pytest.raises(AccessTokenError) as info:
        check_audience(audience)
    assert info.value.code == "invalid_audience"
