"""deploy/nginx.conf and deploy/Caddyfile, as shipped, with Debian's nginx and Caddy in front
of the sidecar (forward-auth) and an app."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from consent_middleware import Settings
from consent_middleware.sidecar import Sidecar, SidecarOptions
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
