"""Starting a login: the browser's transaction cookies stay few and small, and a link
cannot choose what /authorize asks for beyond the user-facing parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
from tests.conftest import DOMAIN, idp, make_settings

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


def test_a_login_started_without_the_request_cookies_goes_through_the_login_route() -> None:
    # /consent starts a login itself when signed out, with its whole URL as the address.
    with gated(make_settings()) as (mock, client):
        idp(mock, [])
        response = client.get("/consent?returnTo=" + "a" * 2000, follow_redirects=False)
        assert response.status_code == 302 and txn_names(client) == []
        location = urlsplit(response.headers["location"])
        assert location.path == "/auth/login"
        assert parse_qs(location.query)["returnTo"] == [f"{HTTPS}/consent"]
        authorize_query(start_login_at(client, response.headers["location"]))
        (name,) = txn_names(client)
        store = TransactionStore(make_settings())
        tx = store.load(name.removeprefix(store.transaction_prefix), dict(client.cookies))
        assert tx is not None and tx.return_to == f"{HTTPS}/consent"


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
