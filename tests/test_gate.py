from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from consent_middleware import (
    ConsentMiddleware,
    NotGatedError,
    Session,
    Settings,
    TokenSet,
    current_user,
)
from consent_middleware._gate import (
    _every_spelling,
    app_path,
    is_public,
    judged,
    judged_claim,
    matches_every_spelling,
    missing_purposes,
    path_spellings,
    requested_target,
    sent_path,
)
from consent_middleware._models import Consent
from consent_middleware._purposes import Purpose
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, make_settings
from tests.test_session import jar


def consent(version: str = "v2", given: object = True, **extra: Any) -> dict[str, Any]:
    return {CLAIM: {"given": given, "version": version, "date": "2026-01-01T00:00:00Z", **extra}}


def session_cookies(settings: Settings, **claims: Any) -> dict[str, str]:
    session = Session.from_claims(
        {"sub": "auth0|1", "email": "a@b.c", **claims}, TokenSet("at", "idt", "rt")
    )
    return jar(asyncio.run(CookieSessionStore(settings).save(session, {})))


async def private(request: Request) -> Response:
    user = current_user(request)
    assert request.state.user is user
    return JSONResponse({"sub": user.sub, "version": user.consent and user.consent.version})


async def public(request: Request) -> Response:
    with pytest.raises(NotGatedError):
        current_user(request)
    return PlainTextResponse("public")


async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


def client(settings: Settings | None = None) -> TestClient:
    settings = settings or make_settings(public_paths=("/", "/static/*"), api_prefixes=("/api",))
    app = Starlette(
        routes=[
            Route("/", public),
            Route("/static/app.css", public),
            Route("/dashboard", private),
            Route("/api/data", private),
            Route("/form", private, methods=["POST"]),
            WebSocketRoute("/ws", echo_ws),
        ]
    )
    app.add_middleware(ConsentMiddleware, settings=settings)
    return TestClient(app, base_url="https://app.example.com", follow_redirects=False)


def test_no_session_html_redirects_to_login_keeping_path_and_query() -> None:
    response = client().get("/dashboard?x=1&y=two", headers={"accept": "text/html"})
    assert response.status_code == 307
    assert response.headers["location"] == "/auth/login?returnTo=%2Fdashboard%3Fx%3D1%26y%3Dtwo"


def test_no_session_post_uses_303() -> None:
    assert client().post("/form").status_code == 303


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/data", {}),
        ("/dashboard", {"accept": "application/json"}),
        # RFC 6839 structured suffixes: JSON:API, problem details, GitHub-style vendor types.
        ("/dashboard", {"accept": "application/vnd.api+json"}),
        ("/dashboard", {"accept": "Application/Problem+JSON, */*;q=0.1"}),
        ("/dashboard", {"x-requested-with": "XMLHttpRequest"}),
        ("/dashboard", {"sec-fetch-mode": "cors", "sec-fetch-dest": "empty", "accept": "*/*"}),
        # A page's own subresources: a redirect would start a sign-in nobody sees (a
        # signed-out browser's favicon would go to the provider's /authorize).
        ("/favicon.ico", {"sec-fetch-mode": "no-cors", "sec-fetch-dest": "image"}),
        ("/app.js", {"sec-fetch-mode": "no-cors", "sec-fetch-dest": "script"}),
    ],
)
def test_no_session_api_gets_401_json(path: str, headers: dict[str, str]) -> None:
    response = client().get(path, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "login_required"
    assert body["login_url"].startswith("https://app.example.com/auth/login?returnTo=")


@pytest.mark.parametrize("dest", ["document", "iframe"])
def test_a_navigation_goes_to_the_login(dest: str) -> None:
    headers = {"sec-fetch-mode": "navigate", "sec-fetch-dest": dest, "accept": "*/*"}
    response = client().get("/dashboard", headers=headers)
    assert response.status_code == 307 and "/auth/login" in response.headers["location"]


@pytest.mark.parametrize(
    "claims",
    [
        {},
        consent(version="v1"),
        consent(given=False),
        consent(given="true"),
        consent(withdrawn=True),
        {CLAIM: "yes"},
    ],
)
def test_without_current_consent_html_goes_to_terms(claims: dict[str, Any]) -> None:
    settings = make_settings()
    c = client(settings)
    c.cookies.update(session_cookies(settings, **claims))
    response = c.get("/dashboard?x=1", headers={"accept": "text/html"})
    assert response.status_code == 303
    assert response.headers["location"] == "/consent?returnTo=%2Fdashboard%3Fx%3D1"
    api = c.get("/api/data", headers={"accept": "application/json"})
    assert api.status_code == 403
    assert api.json() == {
        "error": "consent_required",
        "consent_url": "https://app.example.com/consent?returnTo=%2Fapi%2Fdata",
    }


def test_consented_user_passes_and_is_exposed() -> None:
    settings = make_settings()
    c = client(settings)
    c.cookies.update(session_cookies(settings, **consent()))
    response = c.get("/dashboard")
    assert response.status_code == 200
    assert response.json() == {"sub": "auth0|1", "version": "v2"}
    # A fresh cookie needs no roll: no Set-Cookie on the hot path.
    assert "set-cookie" not in response.headers


def test_cookie_rolls_once_enough_of_the_window_has_passed() -> None:
    settings = make_settings(inactivity_duration=1000, absolute_duration=100_000)
    session = Session.from_claims({"sub": "auth0|1", **consent()}, TokenSet("at", "idt"))
    saved = CookieSessionStore(settings).save(session, {}, now=time.time() - 500)
    cookies = jar(asyncio.run(saved))
    c = client(settings)
    c.cookies.update(cookies)
    response = c.get("/dashboard")
    assert response.status_code == 200
    assert "__session=" in response.headers["set-cookie"]


def test_tampered_cookie_is_logged_out() -> None:
    settings = make_settings()
    c = client(settings)
    value = session_cookies(settings, **consent())["__session"]
    c.cookies.set("__session", value[:-4] + "AAAA")
    assert c.get("/dashboard", headers={"accept": "text/html"}).status_code == 307


@pytest.mark.parametrize(
    "target",
    ["/files/a%2Fb%3Fc=1?real=2", "/files/100%25", "/%E9t%C3%A9", "/caf%C3%A9?q=%C3%BC&x=%2F"],
)
def test_the_login_returns_to_the_address_as_it_was_sent(target: str) -> None:
    # Decoded, "%2F" would become a segment, "%3F" a query, "%25" a bare "%".
    response = client().get(target, headers={"accept": "text/html"})
    assert response.status_code == 307
    (return_to,) = parse_qs(urlsplit(response.headers["location"]).query)["returnTo"]
    assert return_to == target
    denied = client().get(target, headers={"accept": "application/json"})
    assert denied.json()["login_url"].endswith("returnTo=" + quote(target, safe=""))


# --- Below a path prefix -----------------------------------------------------------------
# Two ways a server reports a prefix: in ``path`` and ``root_path`` both (uvicorn's
# --root-path, Starlette's Mount: the ASGI spec's way), or in ``root_path`` alone
# (FastAPI(root_path=...) behind a proxy that strips it, as TestClient(root_path=) sends).


@pytest.mark.parametrize(
    ("path", "raw", "root", "query", "target"),
    [
        ("/dashboard", b"/dashboard", "/app", b"x=1", "/app/dashboard?x=1"),
        ("/app/dashboard", b"/app/dashboard", "/app", b"x=1", "/app/dashboard?x=1"),
        ("/dashboard", b"/dashboard", "", b"x=1", "/dashboard?x=1"),
        ("/a/b", b"/a%2Fb", "/app", b"", "/app/a%2Fb"),
        ("/app/a/b", b"/app/a%2Fb", "/app", b"", "/app/a%2Fb"),
        ("/", b"/", "/app", b"", "/app/"),
        ("/app", b"/app", "/app", b"", "/app"),
        ("/x", b"/x", "/app/", b"", "/app/x"),
        # "/application" is no path below "/app" (Starlette routes it as is).
        ("/application", b"/application", "/app", b"", "/app/application"),
        ("/x", b"/x", "/my app", b"", "/my%20app/x"),
    ],
)  # fmt: skip
def test_the_return_address_holds_the_prefix_however_the_server_reports_it(
    path: str, raw: bytes, root: str, query: bytes, target: str
) -> None:
    scope = {"path": path, "raw_path": raw, "root_path": root, "query_string": query}
    assert requested_target(scope) == target


@pytest.mark.parametrize(
    ("path", "root", "below"),
    [
        ("/app/x", "/app", "/x"),
        ("/x", "/app", "/x"),
        ("/app", "/app", "/"),
        ("/app/x", "/app/", "/x"),
        ("/application", "/app", "/application"),
    ],
)
def test_settings_are_matched_below_the_prefix_as_starlette_routes(
    path: str, root: str, below: str
) -> None:
    assert app_path({"path": path, "root_path": root}) == below


PREFIXED = make_settings(
    app_base_url="https://app.example.com/app",
    purposes=(Purpose("marketing", "Newsletter", "Send it.", "1"),),
    require=(("/premium", ("marketing",)),),
    api_prefixes=("/api",),
)


def prefixed_client(convention: str) -> tuple[TestClient, str]:
    """The gated app below /app, and the prefix the client's paths carry: none when the
    server's root_path is left out of path (the proxy stripped it)."""
    routes = [Route(p, private) for p in ("/dashboard", "/premium", "/api/data")]
    gated = Starlette(routes=routes)
    gated.add_middleware(ConsentMiddleware, settings=PREFIXED)
    if convention == "root_path beside path":
        return TestClient(gated, base_url="https://app.example.com", root_path="/app"), ""
    outer = Starlette(routes=[Mount("/app", app=gated)])
    return TestClient(outer, base_url="https://app.example.com"), "/app"


@pytest.mark.parametrize("convention", ["root_path beside path", "root_path in path"])
def test_refusals_below_a_prefix_come_back_to_the_prefixed_page(convention: str) -> None:
    c, sent = prefixed_client(convention)
    page = {"accept": "text/html"}
    login = c.get(f"{sent}/dashboard?x=1", headers=page, follow_redirects=False)
    assert login.status_code == 307
    assert login.headers["location"] == "/app/auth/login?returnTo=%2Fapp%2Fdashboard%3Fx%3D1"
    api = c.get(f"{sent}/api/data")
    assert api.json()["login_url"] == (
        "https://app.example.com/app/auth/login?returnTo=%2Fapp%2Fapi%2Fdata"
    )
    c.cookies.update(session_cookies(PREFIXED, **consent("v1")))
    terms = c.get(f"{sent}/dashboard?x=1", headers=page, follow_redirects=False)
    assert terms.status_code == 303
    assert terms.headers["location"] == "/app/consent?returnTo=%2Fapp%2Fdashboard%3Fx%3D1"
    c.cookies.update(session_cookies(PREFIXED, **consent()))
    purpose = c.get(f"{sent}/premium", headers=page, follow_redirects=False)
    assert purpose.status_code == 303
    assert purpose.headers["location"] == (
        "/app/consent/purposes?need=marketing&returnTo=%2Fapp%2Fpremium"
    )


def test_public_paths_bypass_the_gate() -> None:
    c = client()
    assert c.get("/").text == "public"
    assert c.get("/static/app.css").text == "public"


def test_websockets_get_the_pages_decision() -> None:
    settings = make_settings()
    c = client(settings)
    # No session: the handshake is refused with a real 401 (ASGI denial-response extension).
    with pytest.raises(WebSocketDenialResponse) as denied:
        c.websocket_connect("/ws").__enter__()
    assert denied.value.status_code == 401
    assert denied.value.json()["error"] == "login_required"
    # A session without the current consent: 403 naming the terms page.
    c.cookies.update(session_cookies(settings, **consent("v1")))
    with pytest.raises(WebSocketDenialResponse) as denied:
        c.websocket_connect("/ws").__enter__()
    assert denied.value.status_code == 403
    assert denied.value.json()["error"] == "consent_required"
    # Consented, same origin: the socket opens and the app sees the user.
    c.cookies.update(session_cookies(settings, **consent()))
    with c.websocket_connect("/ws", headers={"origin": "https://app.example.com"}) as ws:
        assert ws.receive_text() == "hi"
    # Consented, but a page on another site opened it (cross-site websocket hijacking).
    with pytest.raises(WebSocketDenialResponse) as denied:
        c.websocket_connect("/ws", headers={"origin": "https://evil.example"}).__enter__()
    assert denied.value.status_code == 403


def test_websocket_opt_out_and_servers_without_the_denial_extension() -> None:
    settings = make_settings(ungated_websockets=("/ws",))
    with client(settings).websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hi"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused handshake must not reach the app")

    gate = ConsentMiddleware(app, settings=make_settings())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    asyncio.run(gate(scope, receive, send))
    # Closing before accepting: the server answers the handshake with 403.
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_profile_route() -> None:
    settings = make_settings()
    c = client(settings)
    response = c.get("/auth/profile")
    assert response.status_code == 401
    assert response.json()["error"] == "login_required"
    c.cookies.update(session_cookies(settings, **consent()))
    profile = c.get("/auth/profile").json()
    assert profile["sub"] == "auth0|1"
    assert profile[CLAIM]["version"] == "v2"


def test_login_refuses_foreign_return_to() -> None:
    response = client().get("/auth/login", params={"returnTo": "https://other.site"})
    assert response.status_code == 400
    assert "outside this site" in response.text
    assert "set-cookie" not in response.headers


def test_callback_without_transaction_shows_a_page_not_a_loop() -> None:
    response = client().get("/auth/callback", params={"state": "nope", "code": "c"})
    assert response.status_code == 400
    assert "Sign in again" in response.text
    assert "location" not in response.headers


@pytest.mark.parametrize("pattern", ["/newsletter*", "/newsletter"])
@pytest.mark.parametrize(
    "path",
    [
        "/newsletter", "//newsletter", "/./newsletter", "/x/../newsletter", "/news%6Cetter",
        "/Newsletter", "/NEWSLETTER", "/newsletter/", "/newsletter.", "/newsletter;x",
        "/newsletter%20", "/newsletter\\", "/x/..%2Fnewsletter", "/%2e/newsletter",
    ],
)  # fmt: skip
def test_no_spelling_of_a_path_escapes_its_purpose(pattern: str, path: str) -> None:
    marketing = Purpose("marketing", "Newsletter", "Send it.", "1")
    settings = make_settings(purposes=(marketing,), require=((pattern, ("marketing",)),))
    assert missing_purposes(path, frozenset(), settings) == ("marketing",)
    assert missing_purposes(path, frozenset({"marketing"}), settings) == ()
    assert missing_purposes("/newsletters-archive", frozenset(), settings) == (
        ("marketing",) if pattern.endswith("*") else ()
    )


@pytest.mark.parametrize(
    "path",
    [
        "/static/../admin", "/static/%2e%2e/admin", "/static/..%2Fadmin", "//admin",
        "/static/..;/admin", "/static/..%3B/admin", "/static/..;x=1/admin",
        "/static/..\\admin", "/static/..%5Cadmin", "/static/..%5c..%5cadmin",
    ],
)  # fmt: skip
def test_no_spelling_of_another_path_passes_as_public(path: str) -> None:
    # A public prefix fails closed: a path some server would route elsewhere (dot
    # segments, Tomcat's path parameters, backslashes) is gated.
    settings = make_settings(public_paths=("/static/*",))
    assert not is_public(path, settings)
    assert is_public("/static/app.css", settings)
    assert is_public("/static/app.css;v=2", settings)  # its parameters name the same file


@pytest.mark.parametrize(
    "sent",
    [
        "/static/a%2fb/../../admin", "/static/a%2Fb/%2e%2e/%2E./admin",
        "/static/..;%2fstatic/admin", "/static/a%2fb\\..\\..\\admin", "/%73tatic/admin",
    ],
)  # fmt: skip
def test_no_path_as_sent_passes_as_public_where_a_server_reads_it_elsewhere(sent: str) -> None:
    # Decoded first, these stay below /static; split on the sent slashes first (WHATWG URL
    # in Node, Tomcat's path parameters), they are /admin; a server that never decodes
    # routes "/%73tatic" elsewhere too. Public fails closed on both readings.
    settings = make_settings(public_paths=("/static/*",))
    path = unquote(sent)
    assert is_public(path, settings)  # decoded alone, the path looks public
    assert not is_public(path, settings, sent)
    assert not matches_every_spelling(path, ("/static/*",), sent)


@pytest.mark.parametrize(
    "path",
    ["/", "/newsletter", "/newsletter/", "/a/b.c/d", "/café/x", "/a-b_c~d/e", "/x.", "/..x/y"],
)
def test_a_path_every_server_reads_alike_is_its_own_only_spelling(path: str) -> None:
    # The shortcut taken on every gated request with CONSENT_REQUIRE gives what the full
    # reading gives.
    assert path_spellings(path, path) == path_spellings(path) == {path}
    assert _every_spelling(path, path) == {path}


def test_a_path_is_read_as_decoded_once_too() -> None:
    # nginx routes on $uri, decoded once and dot segments resolved: "/static/b%2Fc/../../
    # admin" is "/admin" there, though decoded twice it stays below /static.
    settings = make_settings(public_paths=("/static/*",))
    sent = "/static/b%252Fc%2F..%2F..%2Fadmin"
    assert not is_public(unquote(sent), settings, sent)
    assert not is_public(unquote(sent), settings)
    # Resolved by nginx, "/static/%252e%252e/admin"; decoded twice more by the app behind
    # it, "/static/../admin": "/admin".
    sent = "/static/a%252fb/../%252e%252e/admin"
    assert not is_public(unquote(sent), settings, sent)


@pytest.mark.parametrize(
    "sent",
    [
        "/caf%C3%A9", "/caf%c3%a9", "/café/a%5B1%5D.png", "/caf%C3%A9/a[1].png",
        "/files/my%20docs/a|b.pdf", "/static/a%20b.css", "/static/a%2Fb.css",
    ],
)  # fmt: skip
def test_a_path_escaped_as_browsers_escape_it_stays_public(sent: str) -> None:
    settings = make_settings(public_paths=("/café", "/café/*", "/files/my docs/*", "/static/*"))
    assert is_public(unquote(sent), settings, sent)


@pytest.mark.parametrize(
    "sent",
    ["/x%2fy/../premium/a", "/x%2fy/%2e%2e/premium", "/premium;x/a", "/b%252Fc%2F..%2Fpremium"],
)
def test_no_path_as_sent_escapes_its_purpose(sent: str) -> None:
    marketing = Purpose("marketing", "Newsletter", "Send it.", "1")
    settings = make_settings(purposes=(marketing,), require=(("/premium*", ("marketing",)),))
    assert missing_purposes(unquote(sent), frozenset(), settings, sent) == ("marketing",)


@pytest.mark.parametrize(
    ("raw", "root", "sent"),
    [
        (b"/static/a%2fb", "", "/static/a%2fb"),
        (b"/app/static/a%2fb", "/app", "/static/a%2fb"),
        (b"/%61pp/x", "/app/", "/x"),
        (b"/app", "/app", "/"),
        (b"/other/x", "/app", "/other/x"),  # not below the mount: as sent, so it fails closed
        (None, "", None),
    ],
)  # fmt: skip
def test_the_path_as_sent_is_read_below_the_mount(
    raw: bytes | None, root: str, sent: str | None
) -> None:
    scope: dict[str, Any] = {"path": "/", "root_path": root}
    if raw is not None:
        scope["raw_path"] = raw
    assert sent_path(scope) == sent


def test_the_middleware_gates_a_public_looking_path_as_sent() -> None:
    async def anything(request: Request) -> Response:
        return PlainTextResponse("served")

    app = Starlette(
        routes=[Route("/{rest:path}", anything)],
        middleware=[
            Middleware(ConsentMiddleware, settings=make_settings(public_paths=("/static/*",)))
        ],
    )
    with TestClient(app, base_url="https://app.example.com") as test:
        assert test.get("/static/app.css").text == "served"
        response = test.get("/static/a%2fb/%2e%2e/%2e%2e/admin", follow_redirects=False)
        assert response.status_code == 307
        assert "/auth/login" in response.headers["location"]


# What a hand-edited record may hold: true and its look-alikes, and no value at all.
_ABSENT = object()
_CLAIM_VALUES = [_ABSENT, None, True, False, 1, 0, "true", "", 2.0]


def test_the_claim_read_in_place_decides_as_the_parsed_consent() -> None:
    # The cold path reads the usual claim without building a Consent: it must never
    # decide otherwise than the Consent the app is handed. Every combination, each field
    # absent or any of its look-alikes.
    versions = [*_CLAIM_VALUES, "v2", "v1", 2, "2"]
    claims: list[object] = [*_CLAIM_VALUES[1:], [], "v2"]
    for given_, withdrawn, version in itertools.product(_CLAIM_VALUES, _CLAIM_VALUES, versions):
        fields = {"given": given_, "withdrawn": withdrawn, "version": version}
        claims.append({k: v for k, v in fields.items() if v is not _ABSENT})
    for terms in ("v2", "2"):
        settings = make_settings(terms_version=terms)
        for claim in claims:
            expected = judged(Consent.from_claim(claim), settings)
            assert judged_claim(claim, settings) == expected, claim
