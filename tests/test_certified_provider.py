"""The example app, configured only by environment, against an independent OpenID Certified
provider (panva's oidc-provider on Node.js): nothing here is Auth0 or the dev tenant."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from example_app.app import create_app
from tests.flow import Browser
from tests.live_server import free_port, serve

PROVIDER_DIR = Path(__file__).parent / "certified_provider"
CLIENT_ID = "certified-client"
CLIENT_SECRET = "certified-client-secret-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    node = shutil.which("node")
    assert node, "Node.js is required (scripts/test.sh installs it)"
    assert (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir(), (
        "run scripts/test.sh, which installs tests/certified_provider's npm packages"
    )
    port = free_port()
    app_port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "REDIRECT_URI": f"http://127.0.0.1:{app_port}/auth/callback",
        "POST_LOGOUT_REDIRECT_URI": f"http://127.0.0.1:{app_port}/",
    }
    process = subprocess.Popen(  # noqa: S603 - our own script
        [node, "server.mjs"],
        cwd=PROVIDER_DIR,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("ready "), f"oidc-provider did not start: {line!r}"
        yield f"http://127.0.0.1:{port}|{app_port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def app_base(provider: str) -> Iterator[str]:
    issuer, app_port = provider.split("|")
    base = f"http://127.0.0.1:{app_port}"
    app = create_app(
        {
            "AUTH0_DOMAIN": issuer,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": CLIENT_SECRET,
            "AUTH0_SECRET": "certified-provider-test-secret-0123456789",
            "APP_BASE_URL": base,
            "CONSENT_CLAIM": "https://consent.example.com/consent",
            "CONSENT_TERMS_VERSION": "v1",
        }
    )
    with serve(app, port=int(app_port)):
        yield base


def sign_in(browser: Browser, path: str) -> httpx.Response:
    page = browser.go(path)
    # oidc-provider's own development login form, then its consent screen.
    assert 'name="login"' in page.text, page.text[:500]
    page = browser.submit(page, login="alice", password="any-password")
    if 'value="consent"' in page.text:
        page = browser.submit(page)
    return page


def test_login_then_gated_to_terms_with_the_url_kept(app_base: str) -> None:
    browser = Browser(app_base)
    try:
        page = sign_in(browser, "/dashboard?x=1&y=2")
        url = urlsplit(str(page.url))
        assert (url.scheme + "://" + url.netloc, url.path) == (app_base, "/consent")
        assert parse_qs(url.query)["returnTo"] == ["/dashboard?x=1&y=2"]
        assert page.status_code == 200 and 'name="agree"' in page.text
        profile = browser.client.get(f"{app_base}/auth/profile").json()
        assert profile["sub"] == "alice"
        assert "https://consent.example.com/consent" not in profile
        # API clients of the same session get JSON, not the page.
        api = browser.client.get(f"{app_base}/api/me", headers={"accept": "application/json"})
        assert api.status_code == 403 and api.json()["error"] == "consent_required"
    finally:
        browser.client.close()


def test_accept_without_a_management_api_fails_cleanly(app_base: str) -> None:
    """This provider has no Auth0 Management API: a clear page, the session intact."""
    browser = Browser(app_base)
    try:
        page = sign_in(browser, "/dashboard")
        page = browser.accept(page)
        assert page.status_code == 503 and "could not save" in page.text
        assert browser.client.get(f"{app_base}/auth/profile").status_code == 200
    finally:
        browser.client.close()


def test_logout_uses_the_discovered_end_session_endpoint(app_base: str, provider: str) -> None:
    issuer = provider.split("|")[0]
    browser = Browser(app_base)
    try:
        sign_in(browser, "/dashboard")
        response = browser.client.get(f"{app_base}/auth/logout")
        assert response.status_code in (302, 303, 307)
        location = urlsplit(response.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{issuer}/session/end"
        query = parse_qs(location.query)
        assert query["post_logout_redirect_uri"] == [f"{app_base}/"]
        assert query["id_token_hint"][0].count(".") == 2
        assert browser.client.get(f"{app_base}/auth/profile").status_code == 401
    finally:
        browser.client.close()
