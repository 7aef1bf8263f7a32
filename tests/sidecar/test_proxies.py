"""deploy/nginx.conf and deploy/Caddyfile, as shipped, with Debian's nginx and Caddy in front
of the sidecar (forward-auth) and an app."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from consent_middleware import Settings
from consent_middleware.sidecar import Sidecar, SidecarOptions
from consent_middleware.sidecar._headers import FORWARDING, IDENTITY_HEADERS
from dev_tenant import DevClient, DevTenant
from tests.flow import CLAIM, Browser
from tests.live_server import free_port, serve
from tests.sidecar.test_sidecar import UPSTREAM

ROOT = Path(__file__).resolve().parents[2]
SECRET = "nginx-secret-0123456789abcdef01234567"
LONG_NAME = "N" * 2500  # makes the session cookie big enough to be chunked


@dataclass
class Front:
    base: str
    tenant: DevTenant


@contextmanager
def nginx(sidecar: int, app: int, listen: int) -> Iterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is not installed (scripts/test.sh installs it)"
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = (
        site.replace("127.0.0.1:4180", f"127.0.0.1:{sidecar}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{app}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{listen}")
    )
    with tempfile.TemporaryDirectory(prefix="consent-nginx-") as directory:
        prefix = Path(directory)
        (prefix / "site.conf").write_text(site)
        (prefix / "nginx.conf").write_text(
            f"""
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""
        )
        with serving([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], listen):
            yield


@contextmanager
def caddy(sidecar: int, app: int, listen: int) -> Iterator[None]:
    binary = shutil.which("caddy")
    assert binary, "caddy is not installed (scripts/test.sh installs it)"
    site = (ROOT / "deploy" / "Caddyfile").read_text()
    site = (
        site.replace("127.0.0.1:4180", f"127.0.0.1:{sidecar}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{app}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{listen}")
        # Several Caddys may run at once in tests: none needs the admin endpoint.
        .replace("auto_https off", "auto_https off\n\tadmin off")
    )
    with tempfile.TemporaryDirectory(prefix="consent-caddy-") as directory:
        home = Path(directory)
        (home / "Caddyfile").write_text(site)
        env = {"PATH": "/usr/bin:/bin", "HOME": directory, "XDG_DATA_HOME": directory,
               "XDG_CONFIG_HOME": directory}  # fmt: skip
        command = [binary, "run", "--config", str(home / "Caddyfile"), "--adapter", "caddyfile"]
        with serving(command, listen, env):
            yield


@contextmanager
def serving(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    """Debian's proxy running our config, until it answers on ``port``; stopped after."""
    process = subprocess.Popen(  # noqa: S603 - Debian's nginx or caddy, our config
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until_serving(process, port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def wait_until_serving(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            httpx.get(f"http://127.0.0.1:{port}/auth/nope", timeout=1)
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.05)


PROXIES = {"nginx": nginx, "caddy": caddy}


@pytest.fixture(scope="module", params=sorted(PROXIES))
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    with ExitStack() as stack:
        tenant_port, sidecar_port, listen = free_port(), free_port(), free_port()
        app = stack.enter_context(serve(UPSTREAM))
        base = f"http://127.0.0.1:{listen}"
        tenant_base = f"http://127.0.0.1:{tenant_port}"
        client = DevClient("nginx", "nginx-client-secret", [f"{base}/auth/callback"], [f"{base}/"])
        tenant = DevTenant(tenant_base, [client], CLAIM)
        tenant.users.create("big@example.com", "big-password", name=LONG_NAME)
        stack.enter_context(serve(tenant, port=tenant_port))
        settings = Settings(
            domain=tenant_base,
            client_id="nginx",
            client_secret="nginx-client-secret",
            secret=SECRET,
            app_base_url=base,
            consent_claim=CLAIM,
            terms_version="v1",
            terms_url=f"{base}/terms",
            # Short enough that a second's wait makes the check roll the session.
            inactivity_duration=8,
            absolute_duration=600,
            public_paths=("/public/*",),
            api_prefixes=("/api/",),
        )
        # Forward-auth only: no CONSENT_UPSTREAM, nginx does the proxying.
        sidecar = Sidecar(settings, SidecarOptions())
        stack.enter_context(serve(sidecar, port=sidecar_port, proxy_headers=False))
        proxy = PROXIES[request.param]
        stack.enter_context(proxy(sidecar_port, int(app.rsplit(":", 1)[1]), listen))
        yield Front(base, tenant)


def session_chunks(browser: Browser) -> dict[str, str]:
    return {k: v for k, v in browser.client.cookies.items() if k.startswith("__session")}


def test_gate_terms_accept_and_identity_through_the_proxy(front: Front) -> None:
    browser = Browser(front.base)
    page = browser.go("/dashboard?x=1")
    page = browser.login(page, email="big@example.com", password="big-password")
    assert "/consent" in str(page.url)
    page = browser.accept(page)
    assert str(page.url) == f"{front.base}/dashboard?x=1"
    seen = page.json()
    user = front.tenant.users.by_email("big@example.com")
    assert user is not None
    assert seen["headers"]["x-auth-request-user"] == user["user_id"]
    assert seen["headers"]["x-consent-version"] == "v1"
    assert seen["headers"]["x-consent-assertion"].count(".") == 2
    # A client's own identity header is overwritten by the proxy with the sidecar's.
    forged = browser.client.get(f"{front.base}/x", headers={"X-Auth-Request-User": "admin"})
    assert forged.json()["headers"]["x-auth-request-user"] == user["user_id"]
    browser.client.close()


def test_a_chunked_session_rolled_at_the_check_reaches_the_browser_whole(front: Front) -> None:
    browser = Browser(front.base)
    page = browser.login(browser.go("/dashboard"), email="big@example.com", password="big-password")
    if "/consent" in str(page.url):
        page = browser.accept(page)
    before = session_chunks(browser)
    assert "__session__1" in before, "the test needs a chunked session"
    time.sleep(1.2)  # past a tenth of the inactivity window: the next check rolls it
    rolled = browser.client.get(f"{front.base}/dashboard")
    assert rolled.status_code == 200
    names = [c.split("=", 1)[0] for c in rolled.headers.get_list("set-cookie")]
    assert {"__session__0", "__session__1"} <= set(names)
    after = session_chunks(browser)
    assert after != before and set(after) == set(before)
    # Every chunk came through: the new cookie decrypts, the gate lets it pass.
    assert browser.client.get(f"{front.base}/dashboard").status_code == 200
    browser.client.close()


def test_without_a_session_the_proxy_sends_the_browser_to_the_login(front: Front) -> None:
    response = httpx.get(f"{front.base}/dashboard?y=2")
    assert response.status_code == 302
    assert response.headers["location"].startswith(f"{front.base}/auth/login?returnTo=")


def consented_browser(front: Front, email: str) -> Browser:
    """A new user of the tenant, signed in and consented through the proxy."""
    front.tenant.users.create(email, "a-password")
    browser = Browser(front.base)
    page = browser.login(browser.go("/dashboard"), email=email, password="a-password")
    page = browser.accept(page)
    assert str(page.url) == f"{front.base}/dashboard"
    return browser


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/orders?page=2", {"accept": "application/json"}),
        ("/orders?page=2", {"accept": "*/*", "x-requested-with": "XMLHttpRequest"}),
        ("/orders?page=2", {"accept": "*/*", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}),
        ("/api/orders?page=2", {"accept": "text/html"}),  # under CONSENT_API_PREFIXES
    ],
    ids=["accept", "xhr", "fetch", "api-prefix"],
)
def test_an_api_call_gets_json_never_a_redirect(
    front: Front, path: str, headers: dict[str, str]
) -> None:
    signed_out = httpx.get(f"{front.base}{path}", headers=headers)
    assert signed_out.status_code == 401
    assert signed_out.headers["content-type"].startswith("application/json")
    assert "no-store" in signed_out.headers["cache-control"]
    body = signed_out.json()
    assert body["error"] == "login_required"
    assert body["login_url"].startswith(f"{front.base}/auth/login?returnTo=")
    # Signed in, terms not accepted: 403 naming the terms page, not the page itself.
    email = f"api-{secrets.token_hex(4)}@example.com"
    front.tenant.users.create(email, "a-password")
    browser = Browser(front.base)
    page = browser.login(browser.go("/dashboard"), email=email, password="a-password")
    assert "/consent" in str(page.url)
    refused = browser.client.get(f"{front.base}{path}", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"] == "consent_required"
    assert refused.json()["consent_url"].startswith(f"{front.base}/consent?returnTo=")
    browser.client.close()


def test_no_spelling_of_an_identity_header_from_a_client_reaches_the_app(front: Front) -> None:
    browser = consented_browser(front, "spelling@example.com")
    # Every name the sidecar strips, forged: a name the shipped config forgets fails here.
    forged = {name.decode(): "forged" for name in IDENTITY_HEADERS}
    forged |= {"X_Auth_Request_User": "admin", "X-Auth_Request-Email": "ceo@example.com"}
    seen = browser.client.get(f"{front.base}/x", headers=forged).json()["headers"]
    user = front.tenant.users.by_email("spelling@example.com")
    assert user is not None
    assert seen["x-auth-request-user"] == user["user_id"]
    assert seen["x-auth-request-email"] == "spelling@example.com"
    assert not [name for name in seen if "_" in name]
    assert not [name for name in IDENTITY_HEADERS if seen.get(name.decode()) == "forged"]
    # A public path: the check sends no identity, and none arrives, not even empty text.
    public = httpx.get(f"{front.base}/public/page", headers=forged).json()["headers"]
    assert not [name for name in IDENTITY_HEADERS if name.decode() in public]
    assert not [name for name in public if "_" in name]
    browser.client.close()


def test_a_clients_forwarding_headers_never_reach_the_app(front: Front) -> None:
    # As the sidecar drops them when it proxies (FORWARDING, X-Forwarded-*): an app that
    # routes on X-Original-URL would serve a path the check never approved.
    forged = {name.decode(): "/forged" for name in FORWARDING}
    forged |= {
        f"X-Forwarded-{part}": "forged"
        for part in ("For", "Proto", "Host", "Port", "Prefix", "Server", "Ssl", "Scheme", "Uri")
    }
    browser = consented_browser(front, "forwarding@example.com")
    try:
        consented = browser.client.get(f"{front.base}/x", headers=forged)
    finally:
        browser.client.close()
    public = httpx.get(f"{front.base}/public/page", headers=forged)
    for seen in (consented.json()["headers"], public.json()["headers"]):
        assert not {name: value for name, value in seen.items() if "forged" in value}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"


def test_a_consented_websocket_reaches_the_app_and_a_foreign_page_is_refused(
    front: Front,
) -> None:
    # Caddy passes the handshake's Upgrade on to the check, nginx does not: either way the
    # check decides, and an allowed handshake reaches the app as one.
    email = f"socket-{secrets.token_hex(4)}@example.com"
    browser = consented_browser(front, email)
    cookie = "; ".join(f"{k}={v}" for k, v in browser.client.cookies.items())
    url = front.base.replace("http", "ws") + "/ws"

    async def talk(origin: str) -> str | int:
        headers = {"Cookie": cookie, "Origin": origin}
        try:
            async with websockets.connect(url, additional_headers=headers) as socket:
                await socket.send("hello")
                return str(await asyncio.wait_for(socket.recv(), 5))
        except websockets.InvalidStatus as refused:
            return int(refused.response.status_code)

    user = front.tenant.users.by_email(email)
    assert user is not None
    assert asyncio.run(talk(front.base)) == f"hello:{user['user_id']}"
    assert asyncio.run(talk("https://evil.example")) == 403
    browser.client.close()


def test_the_apps_own_paths_beside_the_consent_page_reach_the_app(front: Front) -> None:
    browser = consented_browser(front, "beside@example.com")
    response = browser.client.get(f"{front.base}/consent-form")
    assert response.status_code == 200
    assert response.json()["path"] == "/consent-form"
    browser.client.close()


def test_a_session_refreshed_at_the_check_is_the_one_the_app_reads(front: Front) -> None:
    front.tenant.users.create("two@example.com", "a-password")
    a, b = Browser(front.base), Browser(front.base)
    page_a = a.login(a.go("/dashboard"), email="two@example.com", password="a-password")
    page_b = b.login(b.go("/dashboard"), email="two@example.com", password="a-password")
    assert "/consent" in str(page_a.url) and "/consent" in str(page_b.url)
    a.accept(page_a)
    # B's session is stale: the check refreshes it, and the app gets the new cookie.
    response = b.client.get(f"{front.base}/dashboard")
    assert response.status_code == 200
    written = [c.split(";", 1)[0] for c in response.headers.get_list("set-cookie")]
    session = [c.split("=", 1)[1] for c in written if c.startswith("__session=")]
    assert session, "the check refreshed the session"
    assert response.json()["cookies"]["__session"] == session[0]
    assert response.json()["headers"]["x-consent-version"] == "v1"
    a.client.close()
    b.client.close()


def test_an_ended_session_is_cleared_in_the_browser_on_the_way_to_the_login(
    front: Front,
) -> None:
    browser = consented_browser(front, "ended@example.com")
    copied = dict(browser.client.cookies.items())
    browser.go("/auth/logout")
    response = httpx.get(f"{front.base}/dashboard", cookies=copied)
    assert response.status_code == 302
    assert urlsplit(response.headers["location"]).path == "/auth/login"
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith("__session=") and "Max-Age=0" in c for c in cleared)
    browser.client.close()


def test_a_path_that_reads_as_another_host_still_leads_to_the_login(front: Front) -> None:
    browser = Browser(front.base)
    # "//evil.example/x": a login would refuse it as a return address; the gate sends the
    # user to sign in and back home instead of to an error page.
    response = browser.client.get(f"{front.base}//evil.example/x")
    assert response.status_code == 302
    login = browser.go(response.headers["location"])
    assert 'name="password"' in login.text
    assert "evil.example" not in response.headers["location"]
    browser.client.close()


def test_with_the_sidecar_unreachable_nginx_answers_a_503_that_says_so() -> None:
    listen = free_port()
    with serve(UPSTREAM) as app, nginx(free_port(), int(app.rsplit(":", 1)[1]), listen):
        response = httpx.get(f"http://127.0.0.1:{listen}/dashboard")
    assert response.status_code == 503
    assert "unavailable" in response.text
    assert response.headers["retry-after"] == "5"


def test_nginx_tells_the_sidecars_own_routes_the_client_it_saw() -> None:
    # A sidecar that trusts nginx (CONSENT_TRUSTED_PROXIES) would otherwise log, and count,
    # the client a request claims to come from. An echo stands in for the sidecar.
    listen = free_port()
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"}
    with serve(UPSTREAM) as stand_in:
        port = int(stand_in.rsplit(":", 1)[1])
        with nginx(port, port, listen):
            for path in ("/auth/login", "/auth/callback", "/consent", "/consent/history"):
                url = f"http://127.0.0.1:{listen}{path}"
                seen = httpx.get(url, headers=forged).json()["headers"]
                assert seen["x-forwarded-for"] == "127.0.0.1", path
                assert seen["x-forwarded-proto"] == "http", path


def test_a_client_cannot_ask_the_check_itself(front: Front) -> None:
    # Only the proxy asks /auth/check: a client asking it directly would get an assertion of
    # its own identity for any audience it names in Host.
    browser = consented_browser(front, "asks-the-check@example.com")
    try:
        asked = browser.client.get(
            f"{front.base}/auth/check",
            headers={"X-Forwarded-Uri": "/x", "X-Forwarded-Host": "other-app.example"},
        )
        assert asked.status_code == 404 and "x-consent-assertion" not in asked.headers
        assert browser.client.get(f"{front.base}/auth/check/x").status_code == 404
        # The gate still answers the proxy's own checks.
        assert browser.client.get(f"{front.base}/x").status_code == 200
    finally:
        browser.client.close()
