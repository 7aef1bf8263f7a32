"""Starting a login: the return address stays short, and a link cannot choose what
/authorize asks for beyond the user-facing parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import httpx2
import respx
from starlette.applications import Starlette
from starlette.testclient import TestClient

from consent_middleware import ConsentMiddleware, Settings
from consent_middleware._redirects import MAX_RETURN_TO
from tests.conftest import DOMAIN, idp, make_settings


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


def authorize_query(response: httpx2.Response) -> dict[str, list[str]]:
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{DOMAIN}/authorize"
    return parse_qs(location.query)


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
