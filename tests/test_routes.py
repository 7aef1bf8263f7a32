"""The callback route with a bad ID token: a clear page naming the reason, and no session."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import respx
from starlette.applications import Starlette
from starlette.testclient import TestClient

from consent_middleware import ConsentMiddleware
from tests.conftest import DOMAIN, ISSUER, idp, make_settings
from tests.keys import SigningKey, hs256_with_public_key, id_token_claims, unsigned_token

APP = "https://app.example.com"


@contextmanager
def gated_app() -> Iterator[tuple[respx.MockRouter, TestClient]]:
    """An empty app behind the gate, its own traffic let through, the provider's mocked."""
    app = Starlette()
    app.add_middleware(ConsentMiddleware, settings=make_settings())
    with respx.mock(assert_all_called=False) as mock, TestClient(app, base_url=APP) as client:
        mock.route(host="app.example.com").pass_through()
        yield mock, client


Forge = Callable[[SigningKey, SigningKey, dict[str, Any]], str]
CASES: list[tuple[str, Forge, str]] = [
    ("alg none", lambda k, o, c: unsigned_token(c), "none"),
    ("HS256 with the public key", lambda k, o, c: hs256_with_public_key(k, c), "HS256"),
    ("wrong iss", lambda k, o, c: k.sign({**c, "iss": "https://evil.example/"}), "issuer"),
    ("wrong aud", lambda k, o, c: k.sign({**c, "aud": "someone-else"}), "audience"),
    ("azp mismatch", lambda k, o, c: k.sign({**c, "azp": "someone-else"}), "authorized party"),
    ("expired", lambda k, o, c: k.sign({**c, "exp": int(time.time()) - 3600}), "expired"),
    ("iat in the future", lambda k, o, c: k.sign({**c, "iat": int(time.time()) + 3600}), "future"),
    ("nonce mismatch", lambda k, o, c: k.sign({**c, "nonce": "other"}), "nonce"),
    ("another key, same kid", lambda k, o, c: o.sign(c, kid=k.kid), "signature"),
    ("truncated", lambda k, o, c: k.sign(c)[:-20], "signature does not verify"),
    ("garbage", lambda k, o, c: "not.a.jwt", "not a well-formed JWT"),
]


@pytest.mark.parametrize(("forge", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejected_id_token_creates_no_session(
    signing_key: SigningKey, other_key: SigningKey, forge: Forge, reason: str
) -> None:
    with gated_app() as (mock, client):
        jwks = idp(mock, [signing_key])
        login = client.get("/auth/login", follow_redirects=False)
        query = parse_qs(urlsplit(login.headers["location"]).query)
        claims = id_token_claims(ISSUER, "client-1", nonce=query["nonce"][0])
        mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"id_token": forge(signing_key, other_key, claims), "access_token": "at"}
        )
        response = client.get(
            "/auth/callback", params={"code": "c", "state": query["state"][0]},
            follow_redirects=False,
        )  # fmt: skip
    assert response.status_code == 400, response.text
    assert "Sign-in rejected" in response.text and reason in response.text
    assert jwks.call_count <= 1  # a forged token never buys a JWKS refetch
    set_cookies = response.headers.get_list("set-cookie")
    assert not any(c.startswith("__session") for c in set_cookies)


BAD_TARGETS = [
    "https://evil.example/",
    "//evil.example",
    "/\\evil.example",
    "javascript:alert(1)",
    "/%2F%2Fevil.example",
    "/ok\r\nSet-Cookie: a=b",
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_login_and_logout_refuse_foreign_targets(target: str) -> None:
    with gated_app() as (mock, client):
        idp(mock, [], end_session_endpoint=f"{DOMAIN}/oidc/logout")
        login = client.get("/auth/login", params={"returnTo": target}, follow_redirects=False)
        logout = client.get("/auth/logout", params={"returnTo": target}, follow_redirects=False)
    assert login.status_code == 400 and "Refused return address" in login.text
    assert "evil" not in login.headers.get("location", "")
    location = urlsplit(logout.headers["location"])
    assert location.netloc == "tenant.example.com"
    assert parse_qs(location.query)["post_logout_redirect_uri"] == [f"{APP}/"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"error": "server_error", "error_description": "down"}, "server_error"),
        ({}, "no authorization code"),
    ],
)
def test_callback_without_a_code_is_a_page(params: dict[str, str], message: str) -> None:
    with gated_app() as (mock, client):
        jwks = idp(mock, [])
        token = mock.post(f"{DOMAIN}/oauth/token").respond(json={})
        state = start_login(client, "/orders?id=7")
        response = client.get(
            "/auth/callback", params={**params, "state": state}, follow_redirects=False
        )
    assert response.status_code == 400 and "Sign-in failed" in response.text
    assert message in response.text
    # Trying again comes back to where the sign-in was going.
    assert try_again_link(response.text) == f"{APP}/auth/login?returnTo=" + quote(
        f"{APP}/orders?id=7", safe=""
    )
    assert token.call_count == 0 and jwks.call_count == 0
    set_cookies = response.headers.get_list("set-cookie")
    assert not any(c.startswith("__session") for c in set_cookies)
    assert any(c.startswith("__Host-txn_") and "Max-Age=0" in c for c in set_cookies)


def start_login(client: TestClient, return_to: str = "") -> str:
    params = {"returnTo": return_to} if return_to else {}
    login = client.get("/auth/login", params=params, follow_redirects=False)
    assert login.status_code == 302, login.text
    return parse_qs(urlsplit(login.headers["location"]).query)["state"][0]


def try_again_link(page: str) -> str:
    found = re.search(r'<a class="primary" href="([^"]*)">', page)
    assert found is not None, page
    return html.unescape(found.group(1))


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        ("login_required", "The identity provider needs you to sign in again."),
        ("consent_required", "allow this site access to your account"),
        ("server_error", "reported 'server_error': no details"),
    ],
)
def test_a_failed_sign_in_says_why_in_words_and_tries_again_to_the_same_page(
    error: str, shown: str
) -> None:
    with gated_app() as (mock, client):
        idp(mock, [])
        state = start_login(client, "/reports?year=2026")
        response = client.get("/auth/callback", params={"error": error, "state": state})
    assert response.status_code == 400 and "Sign-in failed" in response.text
    assert shown in html.unescape(response.text)
    assert "no details" not in response.text or error == "server_error"
    assert try_again_link(response.text) == f"{APP}/auth/login?returnTo=" + quote(
        f"{APP}/reports?year=2026", safe=""
    )


def test_a_refused_grant_tries_again_to_the_same_page() -> None:
    with gated_app() as (mock, client):
        idp(mock, [])
        mock.post(f"{DOMAIN}/oauth/token").respond(400, json={"error": "invalid_grant"})
        state = start_login(client, "/reports")
        response = client.get("/auth/callback", params={"code": "c", "state": state})
    assert response.status_code == 400 and "invalid_grant" in response.text
    assert try_again_link(response.text) == f"{APP}/auth/login?returnTo=" + quote(
        f"{APP}/reports", safe=""
    )


def test_a_used_callback_opened_again_while_signed_in_goes_home(signing_key: SigningKey) -> None:
    with gated_app() as (mock, client):
        idp(mock, [signing_key])
        login = client.get("/auth/login", follow_redirects=False)
        query = parse_qs(urlsplit(login.headers["location"]).query)
        claims = id_token_claims(ISSUER, "client-1", nonce=query["nonce"][0])
        mock.post(f"{DOMAIN}/oauth/token").respond(
            json={"id_token": signing_key.sign(claims), "access_token": "at"}
        )
        callback = {"code": "c", "state": query["state"][0]}
        first = client.get("/auth/callback", params=callback, follow_redirects=False)
        assert first.status_code == 303 and "__session" in client.cookies
        # The back button, a bookmark: the same address again, signed in already.
        again = client.get("/auth/callback", params=callback, follow_redirects=False)
        with TestClient(client.app, base_url=APP) as stranger:
            expired = stranger.get("/auth/callback", params=callback, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == f"{APP}/"
    assert not any(c.startswith("__session") for c in again.headers.get_list("set-cookie"))
    # Without a session it is what it always was: an expired sign-in, signed in again.
    assert expired.status_code == 400 and "Sign-in expired" in expired.text
    assert try_again_link(expired.text) == f"{APP}/auth/login"
