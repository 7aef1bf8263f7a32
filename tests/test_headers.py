"""What the gate does to headers: Vary and Cache-Control on gated responses, Cookie headers
split over several fields (HTTP/2), and an app mounted below a path (``root_path``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from consent_middleware import ConsentMiddleware, Session, Settings, TokenSet, current_user
from consent_middleware._cookies import CHUNK_SIZE
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, DOMAIN, idp, make_settings
from tests.test_session import jar

APP = "https://app.example.com"
SUB = "auth0|headers"
APP_CACHE_CONTROL = "public, max-age=600"


def consented_cookies(
    settings: Settings, *, now: float | None = None, access_token: str = "at"
) -> dict[str, str]:
    """The cookies of a consented session, saved at ``now`` (default: this moment)."""
    consent = {"given": True, "version": settings.terms_version, "date": "2026-01-01T00:00:00Z"}
    session = Session.from_claims(
        {"sub": SUB, "email": "h@example.com", CLAIM: consent},
        TokenSet(access_token, "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    return jar(asyncio.run(CookieSessionStore(settings).save(session, {}, now=now)))


def header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def vary_tokens(response: Any) -> list[str]:
    """Every Vary token of a response, over all its Vary fields, lowercased, in order."""
    fields: list[str] = response.headers.get_list("vary")
    return [t.strip().lower() for f in fields for t in f.split(",") if t.strip()]


async def page(request: Request) -> Response:
    """A page whose Vary and Cache-Control the test chooses through the query string."""
    response = PlainTextResponse(f"hello {current_user(request).sub}")
    for value in request.query_params.getlist("vary"):
        response.headers.append("Vary", value)
    if "cache" in request.query_params:
        response.headers["Cache-Control"] = APP_CACHE_CONTROL
    if "own" in request.query_params:
        # An app cookie whose name only starts like the session's.
        response.set_cookie(request.query_params["own"], "app")
    return response


async def public(request: Request) -> Response:
    return PlainTextResponse("public", headers={"Vary": "Accept-Encoding"})


@contextmanager
def gated(settings: Settings) -> Iterator[TestClient]:
    app = Starlette(routes=[Route("/page", page), Route("/", public)])
    app.add_middleware(ConsentMiddleware, settings=settings)
    with TestClient(app, base_url=APP, follow_redirects=False) as client:
        yield client


# --- Vary -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_vary", "expected"),
    [
        ([], ["cookie"]),
        (["Accept-Encoding"], ["accept-encoding", "cookie"]),
        (["Cookie"], ["cookie"]),
        (["Accept-Encoding, cookie"], ["accept-encoding", "cookie"]),
        (["*"], ["*"]),
    ],
    ids=["none", "merged", "already-cookie", "already-cookie-lowercase", "star"],
)
def test_gated_responses_vary_on_cookie(app_vary: list[str], expected: list[str]) -> None:
    settings = make_settings(public_paths=("/",))
    with gated(settings) as client:
        response = client.get(
            "/page",
            params=[("vary", v) for v in app_vary],
            headers={"cookie": header(consented_cookies(settings))},
        )
    assert response.status_code == 200 and response.text == f"hello {SUB}"
    assert vary_tokens(response) == expected
    assert len(response.headers.get_list("vary")) == 1


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_refusals_vary_on_cookie_and_are_not_stored(accept: str) -> None:
    # The login redirect (or 401) a visitor without a session gets must not be served to
    # them from a cache once signed in, nor to anyone else.
    with gated(make_settings()) as client:
        response = client.get("/page", headers={"accept": accept})
    assert response.status_code in (307, 401)
    assert vary_tokens(response) == ["cookie"]
    assert response.headers["cache-control"] == "no-store"


def test_public_responses_are_left_as_the_app_made_them() -> None:
    settings = make_settings(public_paths=("/",))
    with gated(settings) as client:
        response = client.get("/", headers={"cookie": header(consented_cookies(settings))})
    assert response.status_code == 200
    assert vary_tokens(response) == ["accept-encoding"]


def test_vary_keeps_every_vary_field_the_app_sent() -> None:
    # RFC 9110 5.3: a list-based field may be split over several fields. Dropping one
    # (say Vary: Origin from a CORS layer) lets a shared cache serve the wrong variant.
    settings = make_settings()
    with gated(settings) as client:
        response = client.get(
            "/page",
            params=[("vary", "Accept-Encoding"), ("vary", "Origin")],
            headers={"cookie": header(consented_cookies(settings))},
        )
    assert response.status_code == 200
    assert sorted(vary_tokens(response)) == ["accept-encoding", "cookie", "origin"]


def test_vary_on_a_header_merely_named_like_cookie_still_gets_cookie() -> None:
    # Vary lists field names: "X-Cookie-Consent" is not "Cookie", and a cache would key the
    # gated page by that header alone, serving one user's page to the next.
    settings = make_settings()
    with gated(settings) as client:
        response = client.get(
            "/page",
            params={"vary": "X-Cookie-Consent"},
            headers={"cookie": header(consented_cookies(settings))},
        )
    assert response.status_code == 200
    assert "cookie" in vary_tokens(response)


# --- Cache-Control ----------------------------------------------------------------------


def test_a_rolled_session_cookie_makes_the_response_private() -> None:
    settings = make_settings(inactivity_duration=1000, absolute_duration=100000)
    # Saved half an inactivity window ago: due to roll, so this response sets a new cookie.
    cookies = consented_cookies(settings, now=time.time() - 0.5 * settings.inactivity_duration)
    with gated(settings) as client:
        response = client.get("/page", params={"cache": "1"}, headers={"cookie": header(cookies)})
    assert response.status_code == 200
    set_cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith("__session=") for c in set_cookies), set_cookies
    assert response.headers.get_list("cache-control") == ["private, no-store"]
    assert response.headers["cache-control"] == "private, no-store"


@pytest.mark.parametrize("name", ["__sessionid", "__session_x", "__session__"])
def test_an_apps_cookie_named_like_the_session_does_not_stop_the_roll(name: str) -> None:
    # Before, any Set-Cookie starting "__session" counted as the app setting the session
    # itself: the rolled (or refreshed) session was not written, and the user signed out.
    settings = make_settings(inactivity_duration=1000, absolute_duration=100000)
    cookies = consented_cookies(settings, now=time.time() - 0.5 * settings.inactivity_duration)
    with gated(settings) as client:
        response = client.get("/page", params={"own": name}, headers={"cookie": header(cookies)})
    assert response.status_code == 200
    names = [c.split("=", 1)[0] for c in response.headers.get_list("set-cookie")]
    assert sorted(names) == sorted([name, "__session"])


def test_a_response_without_a_cookie_keeps_the_apps_cache_control() -> None:
    settings = make_settings(inactivity_duration=1000, absolute_duration=100000)
    with gated(settings) as client:
        response = client.get(
            "/page", params={"cache": "1"}, headers={"cookie": header(consented_cookies(settings))}
        )
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert response.headers.get_list("cache-control") == [APP_CACHE_CONTROL]


# --- Cookie headers split over several fields --------------------------------------------


async def cookies_seen(request: Request) -> Response:
    return JSONResponse({"sub": current_user(request).sub, "cookies": request.cookies})


@asynccontextmanager
async def raw_gate(settings: Settings) -> AsyncIterator[ConsentMiddleware]:
    gate = ConsentMiddleware(Starlette(routes=[Route("/seen", cookies_seen)]), settings=settings)
    try:
        yield gate
    finally:
        await gate.aclose()


async def call(
    gate: ConsentMiddleware, path: str, cookie_fields: list[str]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET through the gate with each of ``cookie_fields`` as its own Cookie field."""
    headers = [(b"host", b"app.example.com"), (b"accept", b"application/json")]
    headers += [(b"cookie", field.encode("latin-1")) for field in cookie_fields]
    scope = {
        "type": "http", "http_version": "2", "method": "GET", "path": path,
        "raw_path": path.encode(), "query_string": b"", "headers": headers, "scheme": "https",
        "server": ("app.example.com", 443), "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    started: dict[str, Any] = {}
    body = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        else:
            body.extend(message.get("body", b""))

    await gate(scope, receive, send)
    return started["status"], dict(started["headers"]), bytes(body)


def test_split_cookie_fields_admit_the_user_and_reach_the_app() -> None:
    settings = make_settings()
    session = consented_cookies(settings)
    assert list(session) == ["__session"]

    async def scenario() -> None:
        async with raw_gate(settings) as gate:
            # The session in the second field: reading only the first would see no session.
            status, _, body = await call(
                gate, "/seen", ["theme=dark", f"{header(session)}; lang=en"]
            )
            assert status == 200, body
            decoded = _json(body)
            assert decoded["sub"] == SUB
            assert decoded["cookies"] == {"theme": "dark", **session, "lang": "en"}

    asyncio.run(scenario())


def test_session_chunks_in_different_cookie_fields_are_joined() -> None:
    settings = make_settings()
    chunks = consented_cookies(settings, access_token="a" * (2 * CHUNK_SIZE))
    assert len(chunks) >= 2 and "__session" not in chunks
    # Each chunk in a field of its own, other cookies before and after.
    fields = [f"{name}={value}" for name, value in chunks.items()]
    fields[0] += "; theme=dark"
    fields[-1] = "lang=en; " + fields[-1]

    async def scenario() -> None:
        async with raw_gate(settings) as gate:
            status, _, body = await call(gate, "/seen", fields)
            assert status == 200, body
            decoded = _json(body)
            assert decoded["sub"] == SUB
            assert decoded["cookies"] == {**chunks, "theme": "dark", "lang": "en"}
            # The package's own routes read the joined header too.
            status, _, body = await call(gate, "/auth/profile", fields)
            assert status == 200, body
            assert _json(body)["sub"] == SUB

    asyncio.run(scenario())


def _json(body: bytes) -> dict[str, Any]:
    decoded = json.loads(body)
    assert isinstance(decoded, dict)
    return decoded


# --- Mounted below a path (root_path) ----------------------------------------------------


async def dashboard(request: Request) -> Response:
    return PlainTextResponse(f"dashboard of {current_user(request).sub}")


MOUNTED = make_settings(app_base_url=f"{APP}/app")


@contextmanager
def mounted() -> Iterator[tuple[respx.MockRouter, TestClient]]:
    """The gated app under /app of an outer app, which closes the gate at shutdown."""
    settings = MOUNTED
    gate = ConsentMiddleware(Starlette(routes=[Route("/dashboard", dashboard)]), settings=settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gate.aclose()

    outer = Starlette(routes=[Mount("/app", app=gate)], lifespan=lifespan)
    with respx.mock(assert_all_called=False) as mock, TestClient(outer, base_url=APP) as client:
        mock.route(host="app.example.com").pass_through()
        yield mock, client


def test_mounted_login_route_reaches_the_provider() -> None:
    with mounted() as (mock, client):
        idp(mock, [])
        response = client.get("/app/auth/login", follow_redirects=False)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{DOMAIN}/authorize"
    query = parse_qs(location.query)
    assert query["redirect_uri"] == [f"{APP}/app/auth/callback"]


def test_mounted_gated_page_sends_to_the_mounted_login() -> None:
    with mounted() as (_, client):
        response = client.get(
            "/app/dashboard?x=1", headers={"accept": "text/html"}, follow_redirects=False
        )
    assert response.status_code == 307
    location = urlsplit(response.headers["location"])
    assert location.path == "/app/auth/login"
    assert parse_qs(location.query) == {"returnTo": ["/app/dashboard?x=1"]}


def test_mounted_unknown_own_route_is_a_404_page() -> None:
    with mounted() as (_, client):
        response = client.get("/app/auth/nope", follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def mounted_session(**claims: Any) -> dict[str, str]:
    session = Session.from_claims({"sub": "auth0|1", **claims}, TokenSet("at", "idt", "rt"))
    return jar(asyncio.run(CookieSessionStore(MOUNTED).save(session, {})))


def test_mounted_pages_link_and_post_below_the_mount() -> None:
    # The forms of the terms and withdrawal pages post to the mounted routes: posted to
    # the site's root they would never reach the gate, and nobody could accept.
    consented = {CLAIM: {"given": True, "version": "v2", "date": "2026-01-01T00:00:00Z"}}
    with mounted() as (_, client):
        client.cookies.update(mounted_session())
        terms = client.get("/app/consent", follow_redirects=False)
        client.cookies.update(mounted_session(**consented))
        withdraw = client.get("/app/consent/withdraw", follow_redirects=False)
        posted = client.post(
            "/app/consent/withdraw",
            data={"csrf_token": "not this page's"},
            headers={"origin": APP},
            follow_redirects=False,
        )
    assert terms.status_code == 200 and withdraw.status_code == 200
    assert 'action="/app/consent"' in terms.text and 'href="/app/auth/logout"' in terms.text
    assert 'action="/app/consent/withdraw"' in withdraw.text
    assert posted.status_code == 403  # reached the route, which checks the form


def test_mounted_routes_send_home_below_the_mount() -> None:
    with mounted() as (_, client):
        token = client.get("/app/auth/access-token")
    assert token.status_code == 401
    assert token.json()["login_url"] == f"{APP}/app/auth/login?returnTo=%2Fapp%2F"


def test_the_packages_own_routes_that_set_a_cookie_are_private() -> None:
    # The login's transaction cookie, and the logout's clearing of the session: a shared
    # cache must never keep either for another browser.
    with mounted() as (mock, client):
        idp(mock, [])
        login = client.get("/app/auth/login", follow_redirects=False)
        client.cookies.update(mounted_session())
        logout = client.get("/app/auth/logout", follow_redirects=False)
    for response in (login, logout):
        assert response.headers.get_list("set-cookie"), response.text
        assert response.headers.get_list("cache-control") == ["private, no-store"]
