"""The composition root's front door: unknown paths and wrong methods under the package's own
routes are 404/405 pages, a package error inside a route is its page, never a 500."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import quote

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from consent_middleware import ConsentMiddleware, Session, TokenSet
from consent_middleware._engine import Engine
from consent_middleware._exceptions import SharedStateError
from consent_middleware._session import CookieSessionStore
from consent_middleware._state import LocalState, MarkKind, SharedState
from tests.conftest import CLAIM, DOMAIN, idp, make_settings
from tests.test_session import jar

APP = "https://app.example.com"
DISCOVERY_URL = f"{DOMAIN}/.well-known/openid-configuration"


async def home(request: Request) -> Response:
    return PlainTextResponse("the app")


@contextmanager
def gated_app(
    shared_state: SharedState | None = None,
) -> Iterator[tuple[respx.MockRouter, TestClient]]:
    """An app behind the gate; a 500 anywhere raises in the test instead of passing as a page."""
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(ConsentMiddleware, settings=make_settings(), shared_state=shared_state)
    with (
        respx.mock(assert_all_called=False) as mock,
        TestClient(app, base_url=APP, raise_server_exceptions=True) as client,
    ):
        mock.route(host="app.example.com").pass_through()
        yield mock, client


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/consent", "GET, HEAD, POST"),
        ("PUT", "/consent", "GET, HEAD, POST"),
        ("DELETE", "/consent/withdraw", "GET, HEAD, POST"),
        ("POST", "/auth/logout", "GET, HEAD"),
        ("POST", "/auth/login", "GET, HEAD"),
        ("GET", "/auth/backchannel-logout", "POST"),
    ],
)
def test_a_wrong_method_is_a_405_page_with_allow(method: str, path: str, allow: str) -> None:
    with gated_app() as (_, client):
        response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["cache-control"] == "no-store"
    if path == "/auth/backchannel-logout":
        # Called by the provider, never a person: JSON whoever asks.
        assert response.json() == {"error": "method_not_allowed"}
    else:
        assert "Method not allowed" in response.text
        assert "does not take that kind of request" in response.text
    # An API client gets the same refusal in JSON.
    with gated_app() as (_, client):
        api = client.request(method, path, headers={"accept": "application/json"})
    assert (api.status_code, api.json()) == (405, {"error": "method_not_allowed"})
    assert api.headers["allow"] == allow
    with gated_app() as (_, client):
        unknown = client.get(path + "/nope", headers={"accept": "application/json"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "not_found"})


def test_a_head_for_the_access_token_spends_nothing() -> None:
    # Starlette answers HEAD on a GET route by running it: here that could spend the
    # refresh token for an answer nobody reads.
    with gated_app() as (mock, client):
        token = mock.post(f"{DOMAIN}/oauth/token")
        response = client.head("/auth/access-token", headers={"sec-fetch-site": "same-origin"})
    assert (response.status_code, response.headers["allow"]) == (405, "GET")
    assert not token.called


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/nope"),
        ("GET", "/auth"),
        ("GET", "/auth/"),
        ("GET", "/consent/x"),
        ("POST", "/consent/withdraw/again"),
        ("OPTIONS", "/auth/login/extra"),
    ],
)
def test_an_unknown_own_path_is_a_404_page(method: str, path: str) -> None:
    with gated_app() as (_, client):
        response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 404
    assert "Not found" in response.text
    assert "allow" not in response.headers
    # Answered by the package, not handed to the app (nor refused by the gate).
    assert "the app" not in response.text and "location" not in response.headers


def test_discovery_down_at_login_is_the_unavailable_page(caplog: pytest.LogCaptureFixture) -> None:
    with gated_app() as (mock, client):
        discovery = mock.get(DISCOVERY_URL).respond(503)
        response = client.get("/auth/login?returnTo=%2Freports", follow_redirects=False)
    assert discovery.called
    assert response.status_code == 502
    assert "Sign-in service unavailable" in response.text and "try again" in response.text
    # What failed, and how, is in the log for the operators; the user gets plain words,
    # and a way to try again that still leads to the page asked for.
    assert "HTTP 503" not in response.text and "discovery" not in response.text
    assert "the discovery document answered HTTP 503" in caplog.text
    retry = f"{APP}/auth/login?returnTo={quote(f'{APP}/reports', safe='')}"
    assert f'href="{html.escape(retry)}">Try again</a>' in response.text
    assert not any(c.startswith("__txn_") for c in response.headers.get_list("set-cookie"))


def test_an_error_escaping_a_route_becomes_its_page(caplog: pytest.LogCaptureFixture) -> None:
    # The back-channel route handles refused tokens itself; a provider that cannot be
    # reached to verify one is left to the composition root's error mapping.
    with gated_app() as (mock, client):
        mock.get(DISCOVERY_URL).mock(side_effect=httpx.ConnectError("down"))
        response = client.post("/auth/backchannel-logout", data={"logout_token": "a.b.c"})
        # The provider's call is answered in JSON; a person's login gets the page.
        assert (response.status_code, response.json()) == (502, {"error": "provider_unavailable"})
        page = client.get("/auth/login", follow_redirects=False)
    assert page.status_code == 502 and "Sign-in service unavailable" in page.text
    assert "ConnectError" not in page.text and "openid-configuration" not in page.text
    assert f"{DISCOVERY_URL}: ConnectError" in caplog.text


class StoreAway(LocalState):
    """A shared store that stopped answering writes of revocation marks."""

    async def publish_mark(self, kind: MarkKind, key: str, at: int, ttl: float) -> None:
        raise SharedStateError("the shared store did not answer")


def test_the_shared_store_away_during_a_route_is_a_503_page() -> None:
    settings = make_settings()
    session = Session.from_claims(
        {"sub": "auth0|user1"},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    cookies = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    with gated_app(shared_state=StoreAway()) as (mock, client):
        idp(mock, [])
        client.cookies.update(cookies)
        response = client.get("/auth/logout", follow_redirects=False)
    assert response.status_code == 503
    assert "Temporarily unavailable" in response.text
    assert response.headers["retry-after"] == "5"


class LocksAway(LocalState):
    """A shared store that stopped answering: no lock can be taken."""

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        raise SharedStateError("the shared store did not answer")
        yield  # an async generator, as the lock it stands in for


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/auth/access-token", {"sec-fetch-site": "same-origin"}),
        ("/auth/access-token", {"accept": "application/json", "sec-fetch-site": "same-origin"}),
        ("/consent/receipt.json", {}),
    ],
)
def test_the_json_routes_answer_their_errors_in_json(path: str, headers: dict[str, str]) -> None:
    # The browser's own fetch("/auth/access-token").json() must not meet an HTML page.
    settings = make_settings()
    session = Session.from_claims(
        {"sub": "auth0|user1", CLAIM: {"given": True, "version": "v2"}},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 10),
        issued_at=int((time.time() - 3590) * 1000),  # an hour's token about to run out
    )
    cookies = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    with gated_app(shared_state=LocksAway()) as (mock, client):
        idp(mock, [])
        away = client.get(path, headers=headers)
        client.cookies.update(cookies)
        token = client.get("/auth/access-token", headers=headers)
    assert away.status_code == 401 and away.json()["error"] == "login_required"
    assert token.status_code == 503 and token.json() == {"error": "temporarily_unavailable"}
    assert token.headers["retry-after"] == "5"


@pytest.mark.anyio
async def test_aclose_closes_the_client_it_made() -> None:
    engine = Engine.create(make_settings())
    assert engine.owns_http and not engine.http.is_closed
    await engine.aclose()
    assert engine.http.is_closed


@pytest.mark.anyio
async def test_aclose_leaves_a_client_passed_in_open() -> None:
    async with httpx.AsyncClient() as client:
        engine = Engine.create(make_settings(), http_client=client)
        assert engine.http is client and not engine.owns_http
        await engine.aclose()
        assert not client.is_closed
    assert client.is_closed  # closed by its owner, the block above


def test_a_non_ascii_csrf_token_is_refused_not_a_500() -> None:
    settings = make_settings()
    session = Session.from_claims(
        {"sub": "auth0|user1"},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    cookies = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    form = {"csrf_token": "é" * 64, "version": "v2", "agree": "yes", "return_to": "/"}
    with gated_app() as (_, client):
        client.cookies.update(cookies)
        response = client.post("/consent", data=form, headers={"origin": APP})
    assert response.status_code == 403 and "nothing was changed" in response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("spawned", "concurrency", "redis", "warned"),
    [
        (True, "", "", True),  # uvicorn --workers: each worker is a spawned process
        (False, "4", "", True),
        (False, "1", "", False),
        (False, "", "", False),
        (True, "", "redis://127.0.0.1:1/0", False),
    ],
)
async def test_several_workers_without_redis_are_warned_of(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    spawned: bool,
    concurrency: str,
    redis: str,
    warned: bool,
) -> None:
    # Nothing fails then: a logout or withdrawal in one worker is not seen by the others.
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object() if spawned else None)
    monkeypatch.setenv("WEB_CONCURRENCY", concurrency)
    engine = Engine.create(make_settings(redis_url=redis))
    await engine.aclose()
    assert ("CONSENT_REDIS_URL is unset" in caplog.text) is warned
