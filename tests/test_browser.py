"""End to end in a real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, Route
from starlette.responses import Response

from consent_middleware._events import CollectionMethod, ConsentAction
from consent_middleware._models import Consent
from consent_middleware._pages import Pages
from consent_middleware._purposes import Purpose
from consent_middleware._record import ConsentWriter
from tests.conftest import make_settings
from tests.flow import CLAIM, Live, live_example

APP = "https://app.example.com"

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


# ---------------------------------------------------------------------------------------------
# The pages' own layout, at a phone's width: rendered by Pages and handed to the browser by
# Playwright itself (no server, no network), with the headers (and CSP) they are served with.

LONG_EMAIL = "first.middle.last." + "x" * 60 + "@a-very-long-subdomain.example.com"
WIDE_PURPOSE = Purpose("newsletter_and_partner_offers_by_e-mail", "News", "Letters.", "1" * 30)


def rendered_pages() -> dict[str, Response]:
    long_terms_url = "https://app.example.com/" + "terms-and-conditions-" * 12
    settings = make_settings(terms_url=long_terms_url, purposes=(WIDE_PURPOSE,))
    pages, writer = Pages(settings), ConsentWriter(settings, None)  # type: ignore[arg-type]
    user = {"sub": "auth0|1", "email": LONG_EMAIL}
    accepted = {"given": True, "version": "v2", "date": "2026-01-01T00:00:00.000Z"}
    at = 1767225600123
    events = [
        writer.terms_event(ConsentAction.GIVEN, CollectionMethod.TERMS_PAGE, at),
        writer.purposes_event(
            ConsentAction.GIVEN, CollectionMethod.HISTORY_PAGE, at, [WIDE_PURPOSE.id]
        ),
    ]
    common: dict[str, Any] = {"settings": settings, "user": user, "csrf_token": "t", "error": None}
    return {
        "/consent": pages.render(
            "consent.html", **common, consent=None, return_to="/", statement="I accept.",
            purposes=[WIDE_PURPOSE], shown="d", accepted=False, logout_url="/auth/logout",
            withdraw_url="/consent/withdraw",
        ),
        "/consent/withdraw": pages.render(
            "withdraw.html", **common, consent=Consent.from_claim(accepted), mode="revoke",
            home_url="/", return_to="/consent/withdraw",
        ),
        "/consent/history": pages.render(
            "history.html", **common, events=[("2026-01-01 00:00:00 UTC", e) for e in events],
            purposes=[(WIDE_PURPOSE, True)], shown={WIDE_PURPOSE.id: "d"}, state=accepted,
            return_to="/consent/history", withdraw_url="/consent/withdraw",
            receipt_url="/consent/receipt.json", home_url="/",
        ),
        "/error": pages.sign_in_again("Sign-in failed", "Try once more.", 400, "Try again"),
    }  # fmt: skip


@pytest.fixture
def phone(chromium: Browser) -> Iterator[Page]:
    served = rendered_pages()

    def fulfil(route: Route) -> None:
        response = served[urlsplit(route.request.url).path]
        headers = dict(response.headers)
        route.fulfill(status=response.status_code, headers=headers, body=bytes(response.body))

    context = chromium.new_context(viewport={"width": 375, "height": 740})
    context.route(f"{APP}/**", fulfil)
    yield context.new_page()
    context.close()


def luminance(rgb: str) -> float:
    """WCAG 2 relative luminance of a computed ``rgb(r, g, b)``."""
    channels = [int(c) / 255 for c in re.findall(r"\d+", rgb)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# What the focused element's ring is drawn against: its own background when the ring
# touches it, else the first opaque background around it (the page's is white).
RING = """el => {
  const style = getComputedStyle(el);
  const offset = parseFloat(style.outlineOffset);
  let around = offset > 0 ? el.parentElement : el;
  let background = 'rgb(255, 255, 255)';
  for (; around; around = around.parentElement) {
    const color = getComputedStyle(around).backgroundColor;
    if (color !== 'rgba(0, 0, 0, 0)' && color !== 'transparent') { background = color; break; }
  }
  return {style: style.outlineStyle, width: parseFloat(style.outlineWidth),
          color: style.outlineColor, background, tag: el.tagName, text: el.innerText};
}"""


@pytest.mark.parametrize(
    ("path", "control"),
    [("/consent", "Accept"), ("/consent/withdraw", "Withdraw consent"), ("/error", "Try again")],
)
def test_the_keyboard_focus_ring_shows_on_the_dark_primary_buttons(
    phone: Page, path: str, control: str
) -> None:
    phone.goto(APP + path)
    for _ in range(20):  # by keyboard, as the ring is for keyboard users
        phone.keyboard.press("Tab")
        if phone.evaluate("document.activeElement.innerText") == control:
            break
    ring = phone.evaluate(RING, phone.evaluate_handle("document.activeElement"))
    assert ring["text"] == control, ring
    assert ring["style"] not in ("none", "auto") and ring["width"] >= 2, ring
    # WCAG 1.4.11: 3:1 against what the ring is seen on.
    assert contrast(ring["color"], ring["background"]) >= 3, ring


@pytest.mark.parametrize("path", ["/consent", "/consent/withdraw", "/consent/history"])
def test_nothing_scrolls_the_page_sideways_at_375px(phone: Page, path: str) -> None:
    phone.goto(APP + path)
    assert LONG_EMAIL[:20] in phone.inner_text("main")
    widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths


def test_the_history_table_scrolls_in_its_own_named_focusable_region(phone: Page) -> None:
    phone.goto(f"{APP}/consent/history")
    region = phone.get_by_role("region", name="History")
    assert region.locator("table").count() == 1
    assert region.get_attribute("tabindex") == "0"  # keyboard users can scroll it too
    assert phone.locator("th[scope=col]").count() == 5
