from __future__ import annotations

import time
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any

import pytest

from consent_middleware import Session, TokenSet
from consent_middleware._jose import derive_key, encrypt
from consent_middleware._session import CookieSessionStore
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def jar(headers: list[bytes]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for header in headers:
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header.decode())
        for name, morsel in cookie.items():
            if morsel["max-age"] != "0":
                cookies[name] = morsel.value
    return cookies


def make_session(**user: object) -> Session:
    return Session.from_claims(
        {"sub": "auth0|1", "iss": "x", "aud": "y", "nonce": "n", "email": "a@b.c", **user},
        TokenSet(
            access_token="at", id_token="idt", refresh_token="rt", expires_at=5, scope="openid"
        ),
    )


def test_payload_shape_matches_nextjs_auth0_v4() -> None:
    payload = make_session().to_payload()
    assert set(payload) == {"user", "tokenSet", "internal"}
    assert payload["user"] == {"sub": "auth0|1", "email": "a@b.c"}  # protocol claims dropped
    assert payload["tokenSet"] == {
        "accessToken": "at",
        "idToken": "idt",
        "refreshToken": "rt",
        "expiresAt": 5,
        "scope": "openid",
    }
    # issuedAt is ours (the ID token's iat); nextjs-auth0 carries unknown fields through.
    assert set(payload["internal"]) == {"sid", "createdAt", "issuedAt"}


async def test_fields_this_package_does_not_model_survive_a_roll_and_a_refresh() -> None:
    settings = make_settings()
    now = int(time.time())
    written_elsewhere = {
        "user": {"sub": "auth0|1", "email": "a@b.c"},
        "tokenSet": {
            "accessToken": "at",
            "idToken": "idt",
            "refreshToken": "rt",
            "expiresAt": now + 60,
            "scope": "openid offline_access",
            "requestedScope": "openid profile email offline_access",
            "audience": "https://api.example.com",
            "token_type": "Bearer",
        },
        "accessTokens": [{"audience": "https://other.example.com", "accessToken": "at-2"}],
        "internal": {"sid": "the-sid", "createdAt": now - 10, "sessionExpiresAt": now + 999},
        "futureField": {"kept": True},
    }
    value = encrypt(written_elsewhere, derive_key(settings.secret), now + 600)
    store = CookieSessionStore(settings)
    loaded = await store.load({"__session": value})
    assert loaded is not None and loaded.issued_at == (now - 10) * 1000  # createdAt, in ms
    rolled = await CookieSessionStore(settings).load(jar(await store.save(loaded, {})))
    assert rolled is not None
    refreshed = rolled.refreshed(
        {"sub": "auth0|1", "iat": now}, TokenSet("at-new", "idt-new", None, now + 60), now * 1000
    )
    payload = refreshed.to_payload()
    assert payload["accessTokens"] == written_elsewhere["accessTokens"]
    assert payload["futureField"] == {"kept": True}
    assert payload["internal"]["sessionExpiresAt"] == now + 999
    assert payload["internal"]["issuedAt"] == now * 1000
    assert payload["tokenSet"]["requestedScope"] == "openid profile email offline_access"
    assert payload["tokenSet"]["audience"] == "https://api.example.com"
    assert payload["tokenSet"]["accessToken"] == "at-new"
    assert "refreshToken" not in payload["tokenSet"]  # the new set has none: not the old one


async def test_round_trip_through_cookies() -> None:
    store = CookieSessionStore(make_settings())
    session = make_session(**{"https://consent.example.com/consent": {"given": True}})
    loaded = await store.load(jar(await store.save(session, {})))
    assert loaded is not None
    assert loaded.user == session.user and loaded.token_set == session.token_set
    assert loaded.sid == session.sid


async def test_big_session_is_chunked_and_read_back() -> None:
    store = CookieSessionStore(make_settings())
    session = make_session(blob="z" * 9000)
    cookies = jar(await store.save(session, {}))
    assert "__session__0" in cookies and "__session__2" in cookies
    # A fresh store (no cache) must decrypt the chunks.
    loaded = await CookieSessionStore(make_settings()).load(cookies)
    assert loaded is not None and loaded.user["blob"] == "z" * 9000
    swapped = {
        **cookies,
        "__session__0": cookies["__session__1"],
        "__session__1": cookies["__session__0"],
    }
    assert await CookieSessionStore(make_settings()).load(swapped) is None
    missing = {k: v for k, v in cookies.items() if k != "__session__1"}
    assert await CookieSessionStore(make_settings()).load(missing) is None


async def test_tampered_foreign_and_expired_cookies_mean_no_session() -> None:
    settings = make_settings()
    store = CookieSessionStore(settings)
    cookies = jar(await store.save(make_session(), {}))
    value = cookies["__session"]
    assert (
        await store.load({"__session": value[:-3] + ("AAA" if value[-3:] != "AAA" else "BBB")})
        is None
    )
    assert await store.load({"__session": "garbage"}) is None
    other = CookieSessionStore(make_settings(secret="o" * 40))
    assert await other.load(cookies) is None
    expired = encrypt(
        make_session().to_payload(), derive_key(settings.secret), int(time.time()) - 60
    )
    assert await store.load({"__session": expired}) is None
    wrong_shape = encrypt({"user": "nope"}, derive_key(settings.secret), int(time.time()) + 60)
    assert await store.load({"__session": wrong_shape}) is None


async def test_previous_secret_still_decrypts() -> None:
    old = CookieSessionStore(make_settings(secret="o" * 40))
    cookies = jar(await old.save(make_session(), {}))
    rotated = CookieSessionStore(make_settings(secret="n" * 40, previous_secrets=("o" * 40,)))
    assert await rotated.load(cookies) is not None


async def test_rolling_and_absolute_expiry() -> None:
    settings = make_settings(inactivity_duration=1000, absolute_duration=3000)
    store = CookieSessionStore(settings)
    now = time.time()
    cookies = jar(await store.save(make_session(), {}, now=now))
    session = await store.load(cookies)
    assert session is not None
    assert not store.needs_roll(session, now + 50)  # under 10 % of the window gained
    assert store.needs_roll(session, now + 200)
    old = Session(user={"sub": "u"}, token_set=TokenSet("a", "i"), created_at=int(now) - 2990)
    assert store.expiry(old, now) == int(now) + 10  # capped by the absolute limit


async def test_internal_session_expires_at_ends_the_session_whatever_exp_says() -> None:
    # nextjs-auth0 v4 ends a session at the ID token's session_expiry (30 s leeway).
    settings = make_settings()
    now = int(time.time())
    payload = make_session().to_payload()
    key = derive_key(settings.secret)
    for ends_at, alive in ((now - 31, False), (now - 10, True), (now + 600, True)):
        payload["internal"]["sessionExpiresAt"] = ends_at
        value = encrypt(payload, key, now + 3600)
        loaded = await CookieSessionStore(settings).load({"__session": value})
        assert (loaded is not None) is alive, ends_at - now


async def test_the_summary_and_the_session_agree() -> None:
    from consent_middleware._session import SessionSummary

    store = CookieSessionStore(make_settings())
    assert store.summarizes()

    class DenyList(CookieSessionStore):
        async def load(self, cookies: Mapping[str, str]) -> Session | None:
            return None  # loads its sessions its own way: the gate must ask it

    class Filtered(CookieSessionStore):
        def summary_of(
            self, value: str | bytes, now: float | None = None
        ) -> tuple[SessionSummary, Mapping[str, Any]] | None:
            return None  # reads the usual cookie its own way: the gate must ask load

    assert not DenyList(make_settings()).summarizes()
    assert not Filtered(make_settings()).summarizes()
    session = Session.from_claims({"sub": "auth0|s", "sid": "op-1"}, TokenSet("at", "idt"))
    cookies = {"__session": (await store.save(session, {}))[0].decode().split(";")[0][10:]}
    found = store.summary(cookies)
    loaded = await store.load(cookies)
    from_bytes = store.summary_of(cookies["__session"].encode())
    assert from_bytes is not None and found is not None and from_bytes[1] == found[1]
    assert found is not None and loaded is not None
    summary, payload = found
    for name in ("user", "sid", "created_at", "expires_at", "issued_at", "ends_at"):
        assert getattr(summary, name) == getattr(loaded, name)
    assert Session.from_payload(payload) == loaded
    # A payload Session.from_payload refuses, the summary refuses too.
    for broken in (
        {**payload, "tokenSet": {"expiresAt": "soon"}},
        {**payload, "internal": {"sid": "x"}},
        {**payload, "user": {"sub": 1}},
        {k: v for k, v in payload.items() if k != "exp"},
    ):
        assert SessionSummary.from_payload(broken) is None and Session.from_payload(broken) is None
    assert store.summary({}) is None and store.summary({"__session": "x.y"}) is None
