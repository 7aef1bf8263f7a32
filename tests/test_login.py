"""Starting a login and coming back: the browser's transaction cookies stay few and small,
only the browser that started a login can complete it, and a link cannot choose what
/authorize asks for beyond the user-facing parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
import respx
from starlette.applications import Starlette
from starlette.testclient import TestClient

from consent_middleware import ConsentMiddleware, Settings
from consent_middleware._cookies import CHUNK_SIZE
from consent_middleware._redirects import MAX_RETURN_TO
from consent_middleware._transactions import MAX_TRANSACTIONS, TransactionStore
from tests.conftest import DOMAIN, ISSUER, idp, make_settings
from tests.keys import SigningKey, id_token_claims

HTTPS = "https://app.example.com"
HTTP = "http://localhost:8000"
# What nginx (large_client_header_buffers) and Apache (LimitRequestFieldSize) accept.
PROXY_HEADER_LIMIT = 8 * 1024


@contextmanager
def gated(settings: Settings) -> Iterator[tuple[respx.MockRouter, TestClient]]:
    """An empty app behind the gate at ``settings.app_base_url``; the provider mocked."""
    app = Starlette()
    app.add_middleware(ConsentMiddleware, settings=settings)
    host = urlsplit(settings.app_base_url).hostname
    with (
        respx.mock(assert_all_called=False) as mock,
        TestClient(app, base_url=settings.app_base_url) as client,
    ):
        mock.route(host=host).pass_through()
        yield mock, client


def txn_names(client: httpx2.Client) -> list[str]:
    return [name for name in client.cookies if "txn_" in name]


def cookie_header(client: httpx2.Client) -> str:
    """The Cookie header this browser sends to the app."""
    return client.build_request("GET", "/").headers.get("cookie", "")


def authorize_query(response: httpx2.Response) -> dict[str, list[str]]:
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{DOMAIN}/authorize"
    return parse_qs(location.query)


def set_cookies(response: httpx2.Response) -> list[SimpleCookie]:
    parsed = []
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        parsed.append(cookie)
    return parsed


def start_login_at(client: TestClient, url: str) -> httpx2.Response:
    """Request ``url`` and follow the app's redirects up to the one to /authorize."""
    response = client.get(url, follow_redirects=False)
    while response.is_redirect and not response.headers["location"].startswith(DOMAIN):
        response = client.get(response.headers["location"], follow_redirects=False)
    assert response.status_code == 302, response.text
    return response


LONG_PATH = "/search?q=" + "a" * (MAX_RETURN_TO - len("/search?q="))
ENTRIES = [
    (HTTPS, "/auth/login?" + urlencode({"returnTo": LONG_PATH})),
    (HTTP, "/auth/login?" + urlencode({"returnTo": LONG_PATH})),
    # The gate's own redirect, and /consent for a visitor who is not signed in.
    (HTTPS, LONG_PATH),
    (HTTPS, "/consent?" + urlencode({"returnTo": LONG_PATH})),
]


@pytest.mark.parametrize(
    ("base", "entry"), ENTRIES, ids=["login-https", "login-http", "gate", "consent"]
)
def test_many_logins_keep_few_transaction_cookies_and_a_small_cookie_header(
    base: str, entry: str
) -> None:
    # Each start adds a cookie, and a hostile page can make a browser start many: the
    # browser must still be able to send its Cookie header through a proxy, with a full
    # session chunk beside the transactions.
    with gated(make_settings(app_base_url=base)) as (mock, client):
        idp(mock, [])
        host = urlsplit(base).hostname or ""
        client.cookies.set("__session", "s" * CHUNK_SIZE, domain=host)
        states = []
        for _ in range(10):
            states.append(authorize_query(start_login_at(client, entry))["state"][0])
            names = txn_names(client)
            assert 1 <= len(names) <= MAX_TRANSACTIONS
            assert len(cookie_header(client)) < PROXY_HEADER_LIMIT
            # The newest survive, so the logins the user just started still work.
            store = TransactionStore(make_settings(app_base_url=base))
            assert sorted(names) == sorted(store.cookie_name(s) for s in states[-len(names) :])


def test_a_return_address_longer_than_the_cap_is_refused_at_login() -> None:
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        too_long = "/search?q=" + "a" * MAX_RETURN_TO
        login = client.get("/auth/login", params={"returnTo": too_long}, follow_redirects=False)
        assert login.status_code == 400 and "Refused return address" in login.text
        assert txn_names(client) == []


def test_the_gate_keeps_only_the_path_of_a_long_address() -> None:
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        gate = client.get("/reports?q=" + "a" * 2000, follow_redirects=False)
        assert gate.status_code == 307
        location = urlsplit(gate.headers["location"])
        assert parse_qs(location.query)["returnTo"] == ["/reports"]
        login = client.get(gate.headers["location"], follow_redirects=False)
        assert login.status_code == 302 and txn_names(client)


def test_consent_signed_out_starts_a_bounded_login_itself() -> None:
    # /consent starts a login itself when signed out, with its whole URL as the address:
    # the transaction keeps only the path of an address that long.
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        response = client.get("/consent?returnTo=" + "a" * 2000, follow_redirects=False)
        assert response.status_code == 302
        assert urlsplit(response.headers["location"]).path == "/authorize"
        (name,) = txn_names(client)
        store = TransactionStore(make_settings())
        tx = store.load(name.removeprefix(store.transaction_prefix), dict(client.cookies))
        assert tx is not None and tx.return_to == f"{HTTPS}/consent"


def test_https_login_cookies_carry_the_host_prefix() -> None:
    # RFC 6265bis 4.1.3.2: Secure, Path=/ and no Domain, or the browser drops them.
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        login = client.get("/auth/login", follow_redirects=False)
    cookies = set_cookies(login)
    assert len(cookies) == 2
    for cookie in cookies:
        ((name, morsel),) = cookie.items()
        assert name.startswith("__Host-")
        assert morsel["secure"] is True and morsel["path"] == "/" and morsel["domain"] == ""
    names = {name for cookie in cookies for name in cookie}
    assert any(name.startswith("__Host-txn_") for name in names)
    assert "__Host-login_binding" in names


def test_http_loopback_keeps_the_plain_names() -> None:
    with gated(make_settings(app_base_url=HTTP)) as (mock, client):
        idp(mock, [])
        login = client.get("/auth/login", follow_redirects=False)
    names = {name for cookie in set_cookies(login) for name in cookie}
    assert {n for n in names if not n.startswith("__txn_")} == {"__login_binding"}
    assert not any("Secure" in h for h in login.headers.get_list("set-cookie"))


def start_login(client: TestClient) -> tuple[str, str]:
    """Start a login in ``client``; its state and nonce."""
    query = authorize_query(client.get("/auth/login", follow_redirects=False))
    return query["state"][0], query["nonce"][0]


def callback(client: TestClient, state: str) -> httpx2.Response:
    return client.get(
        "/auth/callback", params={"code": "c", "state": state}, follow_redirects=False
    )


def planted(attacker: TestClient, victim: TestClient, names: dict[str, str]) -> None:
    """Copy the attacker's cookies into the victim's browser, renamed by ``names``."""
    for name, value in attacker.cookies.items():
        victim.cookies.set(names.get(name, name), value, domain="app.example.com")


def attacker_login(
    mock: respx.MockRouter, attacker: TestClient, signing_key: SigningKey
) -> tuple[str, respx.Route]:
    """A login the attacker starts (and could finish): its state and the token route."""
    idp(mock, [signing_key])
    state, nonce = start_login(attacker)
    token = mock.post(f"{DOMAIN}/oauth/token").respond(
        json={
            "id_token": signing_key.sign(id_token_claims(ISSUER, "client-1", nonce=nonce)),
            "access_token": "at",
        }
    )
    return state, token


@pytest.mark.parametrize("victim_started_a_login", [False, True])
def test_a_transaction_copied_to_another_browser_is_refused(
    signing_key: SigningKey, victim_started_a_login: bool
) -> None:
    # Login CSRF (RFC 6749 10.12): the attacker's login must not complete in the victim's
    # browser and sign the victim in as the attacker.
    with gated(make_settings()) as (mock, attacker):
        state, token = attacker_login(mock, attacker, signing_key)
        with TestClient(attacker.app, base_url=HTTPS) as victim:
            if victim_started_a_login:
                start_login(victim)
            name = TransactionStore(make_settings()).cookie_name(state)
            victim.cookies.set(name, attacker.cookies[name], domain="app.example.com")
            refused = callback(victim, state)
            completed = callback(attacker, state)
    assert refused.status_code == 400 and "Sign-in expired" in refused.text
    assert not any("__session" in c for c in refused.headers.get_list("set-cookie"))
    # The same transaction in the browser that started it does complete: the token
    # endpoint was called for it, and only for it.
    assert completed.status_code == 303, completed.text
    assert any(c.startswith("__session=") for c in completed.headers.get_list("set-cookie"))
    assert token.call_count == 1


def test_cookies_a_sibling_subdomain_could_plant_are_ignored_under_https(
    signing_key: SigningKey,
) -> None:
    # A sibling subdomain (or a plain-http man in the middle) can set cookies for the app,
    # but not "__Host-" ones: the attacker's whole login, planted under the names it can
    # set, is not read.
    with gated(make_settings()) as (mock, attacker):
        state, token = attacker_login(mock, attacker, signing_key)
        with TestClient(attacker.app, base_url=HTTPS) as victim:
            planted(attacker, victim, {n: n.removeprefix("__Host-") for n in attacker.cookies})
            planted(
                attacker, victim, {n: "__" + n.removeprefix("__Host-") for n in attacker.cookies}
            )
            refused = callback(victim, state)
    assert refused.status_code == 400 and "Sign-in expired" in refused.text
    assert not any("__session" in c for c in refused.headers.get_list("set-cookie"))
    assert token.call_count == 0


def test_login_forwards_only_the_allowed_authorize_parameters() -> None:
    settings = make_settings(audience="https://api.example.com")
    with gated(settings) as (mock, client):
        idp(mock, [])
        login = client.get(
            "/auth/login",
            params={
                "audience": "https://evil.example",
                "resource": "https://evil.example",
                "scope": "openid admin",
                "screen_hint": "signup",
                "login_hint": "a@b.c",
                "prompt": "none",
                "max_age": "soon",
                "connection": "github",
            },
            follow_redirects=False,
        )
        allowed = client.get(
            "/auth/login",
            params={"prompt": "login consent", "max_age": "0"},
            follow_redirects=False,
        )
    query = authorize_query(login)
    assert query["audience"] == ["https://api.example.com"]
    assert "resource" not in query and "openid admin" not in query["scope"]
    assert query["screen_hint"] == ["signup"] and query["login_hint"] == ["a@b.c"]
    assert query["connection"] == ["github"]
    assert "prompt" not in query and "max_age" not in query
    assert authorize_query(allowed)["prompt"] == ["login consent"]
    assert authorize_query(allowed)["max_age"] == ["0"]


def test_login_without_a_configured_audience_sends_none() -> None:
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        login = client.get(
            "/auth/login", params={"audience": "https://evil.example"}, follow_redirects=False
        )
    assert "audience" not in authorize_query(login)
