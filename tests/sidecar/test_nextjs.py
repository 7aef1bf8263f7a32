"""The reference Next.js app (example_app/nextjs, nextjs-auth0 v4) behind the sidecar, in
Debian's Chromium: first login, terms, accept, the Next.js page shows the consent with no
second login form; a new terms version asks again; a withdrawal sends back to the terms."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request

from consent_middleware import Settings
from consent_middleware.sidecar import Sidecar, SidecarOptions
from dev_tenant import DevClient, DevTenant
from tests.flow import CLAIM, Swappable
from tests.live_server import free_port, serve

APP = Path(__file__).resolve().parents[2] / "example_app" / "nextjs"
SECRET = "nextjs-secret-0123456789abcdef01234567"

pytestmark = pytest.mark.browser


@dataclass
class Running:
    base: str
    server: Swappable
    settings: Settings
    upstream: str

    def deploy(self, **changes: object) -> None:
        """Swap in a sidecar with changed settings (a new terms version, say)."""
        self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]
        self.server.swap(Sidecar(self.settings, SidecarOptions(upstream=self.upstream)))


def next_app(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    npx = shutil.which("npx")
    assert npx and (APP / "node_modules").is_dir(), "run: npm ci --prefix example_app/nextjs"
    subprocess.run([npx, "next", "build"], cwd=APP, env=env, check=True,  # noqa: S603
                   stdout=subprocess.DEVNULL, timeout=300)  # fmt: skip
    # A session of its own: npx starts next-server as a child, which outlives npx unless
    # the whole group is stopped (stop_group).
    process = subprocess.Popen(  # noqa: S603 - the example's own Next.js
        [npx, "next", "start", "-p", str(port), "-H", "127.0.0.1"],
        cwd=APP, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "next start exited"
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "Next.js did not start"
            time.sleep(0.2)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop npx and the next-server it started (they share the session made for them)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with ExitStack() as stack:
        tenant_port, sidecar_port, next_port = free_port(), free_port(), free_port()
        base = f"http://127.0.0.1:{sidecar_port}"
        tenant_base = f"http://127.0.0.1:{tenant_port}"
        client = DevClient(
            "nextjs", "nextjs-client-secret", [f"{base}/auth/callback"], [f"{base}/"]
        )
        stack.enter_context(serve(DevTenant(tenant_base, [client], CLAIM), port=tenant_port))
        env = {
            **os.environ,
            "NEXT_TELEMETRY_DISABLED": "1",
            # nextjs-auth0 refuses a localhost or IP domain; Next.js never calls the provider
            # here (the sidecar does every login and refresh), so a placeholder does.
            "AUTH0_DOMAIN": "dev-tenant.example.com",
            "AUTH0_CLIENT_ID": "nextjs",
            "AUTH0_CLIENT_SECRET": "nextjs-client-secret",
            "AUTH0_SECRET": SECRET,
            "APP_BASE_URL": base,
            "CONSENT_CLAIM": CLAIM,
        }
        process = next_app(next_port, env)
        stack.callback(stop_group, process)
        settings = Settings(
            domain=tenant_base, client_id="nextjs", client_secret="nextjs-client-secret",
            secret=SECRET, app_base_url=base, consent_claim=CLAIM, terms_version="v1",
            terms_url=f"{base}/terms",
        )  # fmt: skip
        server = Swappable()
        upstream = f"http://127.0.0.1:{next_port}"
        running = Running(base, server, settings, upstream)
        running.deploy()
        stack.enter_context(serve(server, port=sidecar_port, proxy_headers=False))
        yield running


def login_forms(page: Page) -> list[str]:
    seen: list[str] = []

    def note(request: Request) -> None:
        # The login form shown (its GET), not its submission.
        shown = request.method == "GET" and "/u/login" in request.url
        if request.is_navigation_request() and shown:
            seen.append(request.url)

    page.on("request", note)
    return seen


def accept(page: Page) -> None:
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="Accept").click()


def test_the_nextjs_page_shows_the_new_consent_with_no_second_login(
    chromium: Browser, running: Running
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    forms = login_forms(page)
    page.goto(f"{running.base}/")
    page.fill('input[name="email"]', "dev@example.com")
    page.fill('input[name="password"]', "dev-password")
    page.click('button[type="submit"]')
    page.wait_for_url(f"{running.base}/consent?*")
    accept(page)
    page.wait_for_url(f"{running.base}/")
    # Rendered by Next.js from auth0.getSession(): the new claim, straight away.
    assert page.inner_text("#consent") == "consented to version v1"
    assert page.inner_text("#user") == "dev@example.com"
    assert len(forms) == 1
    # A new version of the terms: the next page is the terms page again, then Next.js.
    running.deploy(terms_version="v2")
    page.goto(f"{running.base}/")
    page.wait_for_url(f"{running.base}/consent?*")
    accept(page)
    page.wait_for_url(f"{running.base}/")
    assert page.inner_text("#consent") == "consented to version v2"
    assert len(forms) == 1
    # Withdrawing, from the Next.js page's own link: back to the terms.
    page.click("text=Withdraw consent")
    page.get_by_role("button", name="Withdraw consent").click()
    page.wait_for_url(f"{running.base}/consent?*")
    page.goto(f"{running.base}/")
    assert page.url.startswith(f"{running.base}/consent?")
    context.close()
