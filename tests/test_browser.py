"""End to end in a real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Request

from tests.flow import CLAIM, Live, live_example

pytestmark = pytest.mark.browser


@pytest.fixture
def live() -> Iterator[Live]:
    with live_example() as running:
        yield running


def track_navigations(page: Page) -> list[str]:
    """Every top-level document request, redirect hops included, as "METHOD url"."""
    urls: list[str] = []

    def seen(request: Request) -> None:
        if request.is_navigation_request() and request.frame == page.main_frame:
            urls.append(f"{request.method} {request.url}")

    page.on("request", seen)
    return urls


def sign_in(page: Page) -> None:
    page.fill('input[name="email"]', "dev@example.com")
    page.fill('input[name="password"]', "dev-password")
    page.click('button[type="submit"]')


def test_dashboard_login_terms_accept_and_back(chromium: Browser, live: Live) -> None:
    context = chromium.new_context()
    page = context.new_page()
    navigations = track_navigations(page)
    page.goto(f"{live.base}/dashboard?x=1")
    # Not signed in: the dev tenant's login form.
    assert "/dev-tenant/" in page.url
    sign_in(page)
    # Signed in but not consented: gated to the terms page, original URL kept.
    page.wait_for_url(f"{live.base}/consent?*")
    assert "returnTo=%2Fdashboard%3Fx%3D1" in page.url
    accept = page.get_by_role("button", name="Accept")
    checkbox = page.get_by_role("checkbox")
    assert not checkbox.is_checked()  # no pre-ticked box
    assert page.get_by_role("link", name="Decline and log out").is_visible()
    checkbox.check()
    accept.click()
    page.wait_for_url(f"{live.base}/dashboard?x=1")
    assert "dev@example.com" in page.inner_text("#greeting")
    assert "version v1" in page.inner_text("#consent")
    assert page.inner_text("#query") == "x=1"
    profile = json.loads(page.goto(f"{live.base}/auth/profile").text())  # type: ignore[union-attr]
    assert profile[CLAIM]["version"] == "v1" and profile[CLAIM]["given"] is True
    # The login form was shown once, and accepting made no trip to the IdP: the one
    # /authorize hop is the first login, the claim came back by the refresh-token grant.
    assert sum(u.startswith("GET ") and "/u/login" in u for u in navigations) == 1, navigations
    assert sum("/dev-tenant/authorize" in u for u in navigations) == 1, navigations
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["__session"]["httpOnly"] and cookies["__session"]["sameSite"] == "Lax"
    context.close()


def test_withdraw_from_the_dashboard(chromium: Browser, live: Live) -> None:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{live.base}/dashboard")
    sign_in(page)
    page.wait_for_url(f"{live.base}/consent?*")
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="Accept").click()
    page.wait_for_url(f"{live.base}/dashboard")
    page.get_by_role("link", name="Withdraw consent").click()
    page.get_by_role("button", name="Withdraw consent").click()
    page.wait_for_url(f"{live.base}/consent?*")
    assert "You withdrew your consent" in page.content()
    page.goto(f"{live.base}/dashboard")
    assert page.url.startswith(f"{live.base}/consent?")
    context.close()


def test_withdrawal_in_one_browser_stops_the_other(chromium: Browser, live: Live) -> None:
    # Two browsers, each with its own cookies and its own IdP session, one user.
    first, second = chromium.new_context(), chromium.new_context()
    pages = []
    for context in (first, second):
        page = context.new_page()
        page.goto(f"{live.base}/dashboard")
        sign_in(page)
        # The first browser gets the terms; the second finds them accepted already.
        page.wait_for_url(lambda url: "/consent?" in url or url.endswith("/dashboard"))
        if "/consent?" in page.url:
            page.get_by_role("checkbox").check()
            page.get_by_role("button", name="Accept").click()
        page.wait_for_url(f"{live.base}/dashboard")
        pages.append(page)
    a, b = pages
    b.get_by_role("link", name="Withdraw consent").click()
    b.get_by_role("button", name="Withdraw consent").click()
    b.wait_for_url(f"{live.base}/consent?*")
    # The other browser's cookie still says "consented": its next page is the terms page.
    a.reload()
    a.wait_for_url(f"{live.base}/consent?*")
    assert "You withdrew your consent" in a.content()
    first.close()
    second.close()
