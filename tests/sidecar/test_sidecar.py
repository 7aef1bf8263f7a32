"""The sidecar over real HTTP: dev tenant, sidecar and an upstream app, each on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets
from jose import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from consent_middleware import Settings
from consent_middleware.sidecar import Sidecar, SidecarOptions
from dev_tenant import DevClient, DevTenant
from tests.flow import CLAIM, Browser
from tests.live_server import free_port, serve

SECRET = "sidecar-secret-0123456789abcdef0123456"
CLIENT_SECRET = "sidecar-client-secret"


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "headers": {k: v for k, v in request.headers.items()},
            "cookies": dict(request.cookies),
            "body_bytes": len(body),
        }
    )


async def stream(request: Request) -> Response:
    async def chunks() -> Any:
        for i in range(5):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return Response("late")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"{text}:{websocket.headers.get('x-auth-request-user')}")
    await websocket.close()


async def ws_token(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(websocket.headers.get("x-forwarded-access-token", "-"))
    await websocket.close()


UPSTREAM = Starlette(
    routes=[
        Route("/slow", slow),
        Route("/events", stream),
        WebSocketRoute("/ws", ws_echo),
        WebSocketRoute("/ws-token", ws_token),
        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "OPTIONS"]),
    ]
)


@dataclass
class Stack:
    base: str
    tenant: DevTenant
    upstream: str
    settings: Settings

    def browser(self) -> Browser:
        return Browser(self.base)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with ExitStack() as stack:
        tenant_port, sidecar_port = free_port(), free_port()
        upstream = stack.enter_context(serve(UPSTREAM))
        base = f"http://127.0.0.1:{sidecar_port}"
        tenant_base = f"http://127.0.0.1:{tenant_port}"
        client = DevClient(
            client_id="sidecar",
            client_secret=CLIENT_SECRET,
            redirect_uris=[f"{base}/auth/callback"],
            logout_urls=[f"{base}/"],
        )
        tenant = DevTenant(tenant_base, [client], CLAIM)
        stack.enter_context(serve(tenant, port=tenant_port))
        settings = Settings(
            domain=tenant_base,
            client_id="sidecar",
            client_secret=CLIENT_SECRET,
            secret=SECRET,
            app_base_url=base,
            consent_claim=CLAIM,
            terms_version="v1",
            terms_url=f"{upstream}/terms",
            public_paths=("/public/*",),
        )
        options = SidecarOptions(upstream=upstream, upstream_timeout=0.5)
        # As consent-sidecar runs it: uvicorn trusts no X-Forwarded-* of its own.
        sidecar = Sidecar(settings, options)
        stack.enter_context(serve(sidecar, port=sidecar_port, proxy_headers=False))
        yield Stack(base, tenant, upstream, settings)


def consented(stack: Stack) -> Browser:
    browser = stack.browser()
    page = browser.login(browser.go("/dashboard"))
    if "/consent" in str(page.url):
        page = browser.accept(page)
    assert page.status_code == 200 and str(page.url) == f"{stack.base}/dashboard", page.text
    return browser


def test_gate_terms_accept_and_identity_for_the_upstream(stack: Stack) -> None:
    browser = consented(stack)
    seen = browser.client.get(
        f"{stack.base}/dashboard?x=1",
        headers={"X-Auth-Request-User": "admin", "X-Consent-Version": "forged"},
    ).json()
    headers = seen["headers"]
    user = stack.tenant.users.by_email("dev@example.com")
    assert user is not None
    # The client's copies are gone; the sidecar's own are there.
    assert headers["x-auth-request-user"] == user["user_id"]
    assert headers["x-auth-request-email"] == "dev@example.com"
    assert headers["x-consent-version"] == "v1"
    assert seen["query"] == "x=1"
    # The assertion verifies with a stock JWT library against the published JWKS.
    jwks = httpx.get(f"{stack.base}/.well-known/consent-jwks.json").json()
    claims = jwt.decode(
        headers["x-consent-assertion"], jwks, algorithms=["ES256"], audience=stack.upstream
    )
    assert claims["sub"] == user["user_id"] and claims["iss"] == stack.base
    assert claims[CLAIM]["version"] == "v1" and claims["exp"] - claims["iat"] == 60
    # The upstream sees the session cookie (a Next.js app reads it with getSession()).
    assert "__session" in seen["cookies"]
    browser.client.close()


def test_forwarded_headers_from_an_untrusted_client_are_replaced(stack: Stack) -> None:
    browser = consented(stack)
    seen = browser.client.get(
        f"{stack.base}/x",
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example",
                 "Connection": "keep-alive, X-Secret", "X-Secret": "hop"},
    ).json()["headers"]  # fmt: skip
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] != "evil.example"
    assert "x-secret" not in seen  # named in Connection: hop-by-hop (RFC 9110 7.6.1)
    browser.client.close()


def test_not_signed_in_and_not_consented_never_reach_the_upstream(stack: Stack) -> None:
    api = httpx.get(f"{stack.base}/api/data", headers={"accept": "application/json"})
    assert api.status_code == 401 and api.json()["error"] == "login_required"
    page = httpx.get(f"{stack.base}/dashboard")
    assert page.status_code == 307 and page.headers["location"].startswith("/auth/login")
    public = httpx.get(f"{stack.base}/public/info", headers={"X-Auth-Request-User": "x"})
    assert public.status_code == 200
    assert "x-auth-request-user" not in public.json()["headers"]


def test_bodies_stream_both_ways(stack: Stack) -> None:
    browser = consented(stack)

    def upload() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * (1 << 20)

    sent = browser.client.post(f"{stack.base}/upload", content=upload(), timeout=60)
    assert sent.status_code == 200 and sent.json()["body_bytes"] == 64 << 20
    with browser.client.stream("GET", f"{stack.base}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in events.iter_lines() if line]
    assert lines == [f"data: {i}" for i in range(5)]
    browser.client.close()


def test_upstream_slow_is_504_and_down_is_502(stack: Stack) -> None:
    browser = consented(stack)
    late = browser.client.get(f"{stack.base}/slow")
    assert late.status_code == 504 and "took too long" in late.text
    # An API call or fetch reads JSON, as it does from the gate's refusals.
    api = browser.client.get(f"{stack.base}/slow", headers={"accept": "application/json"})
    assert api.status_code == 504 and api.json()["error"] == "upstream_timeout"
    assert "took too long" in api.json()["error_description"]
    browser.client.close()


def test_websockets_are_proxied_for_consented_users(stack: Stack) -> None:
    browser = consented(stack)
    cookie = "; ".join(f"{k}={v}" for k, v in browser.client.cookies.items())
    url = stack.base.replace("http", "ws") + "/ws"

    async def talk() -> str:
        async with websockets.connect(
            url, additional_headers={"Cookie": cookie, "Origin": stack.base}, open_timeout=5
        ) as socket:
            await socket.send("hello")
            return str(await asyncio.wait_for(socket.recv(), 5))

    user = stack.tenant.users.by_email("dev@example.com")
    assert user is not None
    assert asyncio.run(talk()) == f"hello:{user['user_id']}"

    async def refused() -> int:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(url, open_timeout=5)
        return info.value.response.status_code

    assert asyncio.run(refused()) == 401
    browser.client.close()


def test_the_check_answers_a_handshake_passed_on_to_it(stack: Stack) -> None:
    # Caddy's forward_auth passes the original handshake's Upgrade on: the server hands the
    # check over as a websocket, and it answers in HTTP all the same.
    browser = consented(stack)
    handshake = {
        "X-Forwarded-Uri": "/ws",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Host": "app.example",
        "X-Forwarded-Proto": "https",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    check = f"{stack.base}/auth/check"
    allowed = browser.client.get(check, headers={**handshake, "Origin": "https://app.example"})
    assert allowed.status_code == 200 and "x-consent-assertion" in allowed.headers
    foreign = browser.client.get(check, headers={**handshake, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and foreign.json() == {"error": "forbidden_origin"}
    # nginx reads a refusal's JSON from a header: it has no page to send anyone to.
    assert json.loads(foreign.headers["x-consent-json"]) == {"error": "forbidden_origin"}
    # A websocket cannot follow a redirect: the 401 the reverse proxy answers, in either
    # mode, with the login a page would be sent to.
    signed_out = httpx.get(f"{check}?mode=redirect", headers=handshake)
    assert signed_out.status_code == 401 and signed_out.json()["error"] == "login_required"
    assert "returnTo=%2Fws" in signed_out.headers["x-consent-redirect"]
    browser.client.close()


def test_forward_auth_contract(stack: Stack) -> None:
    check = f"{stack.base}/auth/check"
    missing = httpx.get(check)
    assert missing.status_code == 400 and "X-Forwarded-Uri" in missing.json()["error_description"]
    original = {"X-Forwarded-Uri": "/dashboard?x=1", "X-Forwarded-Host": "app.example",
                "X-Forwarded-Proto": "https", "X-Forwarded-Method": "GET"}  # fmt: skip
    anonymous = httpx.get(check, headers=original)
    assert anonymous.status_code == 401
    login_url = anonymous.json()["login_url"]
    assert anonymous.headers["x-consent-redirect"] == login_url
    assert parse_qs(urlsplit(login_url).query)["returnTo"] == ["/dashboard?x=1"]
    assert "x-consent-json" not in anonymous.headers  # a page: nginx sends the redirect
    redirect = httpx.get(check, params={"mode": "redirect"}, headers=original)
    assert redirect.status_code == 302 and redirect.headers["location"] == login_url
    # An API call gets the JSON in either mode, and in a header for nginx.
    for mode in ("redirect", "status"):
        api = httpx.get(
            check, params={"mode": mode}, headers={**original, "Accept": "application/json"}
        )
        assert api.status_code == 401 and api.json()["login_url"] == login_url
        assert json.loads(api.headers["x-consent-json"]) == api.json()
    browser = consented(stack)
    allowed = browser.client.get(check, headers=original)
    assert allowed.status_code == 200
    assert allowed.headers["x-auth-request-email"] == "dev@example.com"
    assertion = jwt.get_unverified_claims(allowed.headers["x-consent-assertion"])
    assert assertion["aud"] == "https://app.example"  # the original request's origin
    # Envoy's ext_authz: the original path after the check path, on the check itself.
    envoy = browser.client.get(f"{check}/dashboard", params={"x": "1"}, headers={"Host": "a"})
    assert envoy.status_code == 200
    public = httpx.get(check, headers={**original, "X-Forwarded-Uri": "/public/x"})
    assert public.status_code == 200 and "x-auth-request-user" not in public.headers
    # A websocket handshake from a foreign page is refused even with a consented session;
    # from the app's own origin it passes.
    handshake = {
        **original,
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    foreign = browser.client.get(check, headers={**handshake, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and foreign.json() == {"error": "forbidden_origin"}
    own = browser.client.get(check, headers={**handshake, "Origin": "https://app.example"})
    assert own.status_code == 200 and "x-consent-assertion" in own.headers
    browser.client.close()


def test_health_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.base}/ping").text == "ok"
    assert httpx.get(f"{stack.base}/ready").json() == {"ready": True}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A bare environment, but for what measures coverage in child processes.
    measuring = {k: v for k, v in os.environ.items() if k.startswith("COVERAGE")}
    return subprocess.run(  # noqa: S603 - this interpreter, the package's own module
        [sys.executable, "-m", "consent_middleware.sidecar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**measuring, **(env if env is not None else {"PATH": "/usr/bin:/bin"})},
        check=False,
    )


def cli_environment(app_base_url: str) -> dict[str, str]:
    """The least the command needs to start: the gate's required settings."""
    return {
        "PATH": "/usr/bin:/bin",
        "AUTH0_DOMAIN": "https://tenant.example.com",
        "AUTH0_CLIENT_ID": "c",
        "AUTH0_CLIENT_SECRET": "s",
        "AUTH0_SECRET": SECRET,
        "APP_BASE_URL": app_base_url,
        "CONSENT_CLAIM": CLAIM,
        "CONSENT_TERMS_VERSION": "v1",
        "CONSENT_TERMS_URL": "https://app.example.com/terms",
    }


def test_cli_help_and_one_line_errors() -> None:
    shown = run_cli("--help")
    assert shown.returncode == 0
    for name in ("--upstream", "--workers", "CONSENT_TRUSTED_PROXIES", "AUTH0_DOMAIN *"):
        assert name in shown.stdout
    missing = run_cli()
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "AUTH0_DOMAIN" in missing.stderr
    env = cli_environment("https://app.example.com")
    workers = run_cli("--workers", "2", env=env)
    assert workers.returncode == 1 and "CONSENT_REDIS_URL" in workers.stderr
    bad = run_cli("--trusted-proxies", "not-an-address", env=env)
    assert bad.returncode == 1 and "CONSENT_TRUSTED_PROXIES" in bad.stderr
    assert json.dumps(bad.stderr).count("Traceback") == 0
    # What each worker builds is checked before any starts: uvicorn would start a worker
    # that fails again and again, never exiting.
    shared = {**env, "CONSENT_REDIS_URL": "redis://127.0.0.1:1/0"}
    for name, value in (("CONSENT_ASSERTION_KEY", "garbage"), ("CONSENT_LEDGER_URL", "mysql://x")):
        failed = run_cli(
            "--workers", "2", env={**shared, name: value, "CONSENT_LEDGER_KEY": "k" * 32}
        )
        assert failed.returncode == 1 and name in failed.stderr, failed.stderr
        assert failed.stderr.strip().count("\n") == 0
    nan = run_cli(env={**env, "CONSENT_UPSTREAM_TIMEOUT": "nan"})
    assert nan.returncode == 1 and "CONSENT_UPSTREAM_TIMEOUT" in nan.stderr


@pytest.mark.parametrize(
    "target",
    [
        "/consent/../dashboard", "/auth/..%2Fdashboard", "/public/../dashboard", "//public/x",
        "/public/a%2fb/../../dashboard", "/public/..;%2fpublic/dashboard",
        "/public/b%252Fc%2F..%2F..%2Fdashboard",
    ],
)  # fmt: skip
def test_the_check_decides_on_the_path_the_app_will_serve(stack: Stack, target: str) -> None:
    # A proxy routes on the cleaned-up path while the app may resolve ".." itself: no path
    # trick turns a gated page into a public or own one.
    headers = {"X-Forwarded-Uri": target, "X-Forwarded-Host": "app.example"}
    assert httpx.get(f"{stack.base}/auth/check", headers=headers).status_code == 401


def test_envoys_check_form_reads_the_path_as_sent(stack: Stack) -> None:
    # Envoy asks /auth/check/<original path>: the same spellings as X-Forwarded-Uri.
    connection = http.client.HTTPConnection(urlsplit(stack.base).netloc, timeout=5)
    try:
        connection.request(
            "GET", "/auth/check/public/a%2fb/../../dashboard", headers={"Host": "app.example"}
        )
        assert connection.getresponse().status == 401
    finally:
        connection.close()


@pytest.mark.parametrize("target", ["/public/%2E%2E/dashboard", "/public/a%2fb/../../dashboard"])
def test_dot_segments_do_not_make_a_gated_page_public(stack: Stack, target: str) -> None:
    # Sent as is (no client library resolving its dots): the upstream gets the raw path,
    # and WHATWG URL (Node) resolves it to /dashboard.
    connection = http.client.HTTPConnection(urlsplit(stack.base).netloc, timeout=5)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        assert response.status in (307, 401)
        assert "/auth/login" in (response.getheader("location") or "")
    finally:
        connection.close()


# What a browser sends before a cross-origin PUT: no cookie, ever.
PREFLIGHT = {
    "Origin": "https://spa.example",
    "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "content-type",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Dest": "empty",
}


def test_preflights_reach_the_upstream_only_when_told(stack: Stack) -> None:
    # By default a preflight is gated like any request, and so refused.
    assert httpx.options(f"{stack.base}/api/items", headers=PREFLIGHT).status_code == 401
    options = SidecarOptions(upstream=stack.upstream, skip_preflight=True)
    with serve(Sidecar(stack.settings, options), proxy_headers=False) as base:
        forged = {**PREFLIGHT, "X-Auth-Request-User": "admin", "X-Consent-Version": "v9"}
        passed = httpx.options(f"{base}/api/items", headers=forged)
        assert passed.status_code == 200 and passed.json()["path"] == "/api/items"
        assert not {"x-auth-request-user", "x-consent-version"} & set(passed.json()["headers"])
        # An OPTIONS that announces no request, or carries a cookie, credentials or a
        # body, is no preflight: gated (an upstream reading the session would take it as
        # the user's).
        for other in (
            {"Origin": "https://spa.example", "Accept": "application/json"},
            {**PREFLIGHT, "Cookie": "__session=abc"},
            {**PREFLIGHT, "Authorization": "Bearer abc"},
        ):
            assert httpx.options(f"{base}/api/items", headers=other).status_code == 401
        with_body = httpx.request("OPTIONS", f"{base}/api/items", headers=PREFLIGHT, content=b"{}")
        assert with_body.status_code == 401
        # The sidecar's own routes answer for themselves.
        own = httpx.options(f"{base}/auth/access-token", headers=PREFLIGHT)
        assert own.status_code == 405 and "allow" in own.headers
        # Forward-auth: a preflight the proxy vouches for (asked with OPTIONS itself, as
        # Envoy does) is let by, with no identity.
        original = {"X-Forwarded-Uri": "/api/items", "X-Forwarded-Host": "app.example"}
        asked = {**PREFLIGHT, **original, "X-Forwarded-Method": "OPTIONS"}
        check = httpx.options(f"{base}/auth/check", headers=asked)
        assert check.status_code == 200 and "x-auth-request-user" not in check.headers
        # A client's own X-Forwarded-Method, which a proxy that does not set it passes on
        # to the check, vouches for nothing: the GET it stands for is gated.
        assert httpx.get(f"{base}/auth/check", headers=asked).status_code == 401
    # A trusted proxy's word is taken (nginx's auth_request, Caddy and Traefik ask with GET).
    trusting = SidecarOptions(
        upstream=stack.upstream, skip_preflight=True, trusted_proxies=("127.0.0.1",)
    )
    with serve(Sidecar(stack.settings, trusting), proxy_headers=False) as base:
        assert httpx.get(f"{base}/auth/check", headers=asked).status_code == 200


def test_the_served_sidecar_logs_no_authorization_code_and_its_own_info() -> None:
    port = free_port()
    measuring = {k: v for k, v in os.environ.items() if k.startswith("COVERAGE")}
    env = {**measuring, **cli_environment(f"http://127.0.0.1:{port}")}
    server = subprocess.Popen(  # noqa: S603 - this interpreter, the package's own module
        [sys.executable, "-m", "consent_middleware.sidecar", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        callback = httpx.get(f"{base}/auth/callback?code=CODE-4711&state=STATE-0815&x=1")
        assert callback.status_code == 400
    finally:
        server.terminate()
        out, err = server.communicate(timeout=20)
    assert "/auth/callback?code=[redacted]&state=[redacted]&x=1" in out
    assert "CODE-4711" not in out + err and "STATE-0815" not in out + err
    # The package's own loggers print, at INFO, with their names.
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, logging.config\n"
            "from consent_middleware.sidecar._logging import log_config\n"
            "logging.config.dictConfig(log_config())\n"
            "logging.getLogger('consent_middleware._management').info('retrying')\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    )
    assert "INFO:     consent_middleware._management: retrying" in shown.stderr
