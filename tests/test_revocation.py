"""A change made in one browser reaches every session of the user, over real HTTP.

Two independent browsers (own cookie jars, own IdP sessions) sign in as the same user
against the dev tenant; what one does (withdraw, logout, accept) must be seen by the other
on its very next request, not when its cookie expires.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from example_app.app import DEV_CLIENT_ID
from tests.flow import CLAIM, Browser, Live, forms, live_example


@pytest.fixture
def live() -> Iterator[Live]:
    with live_example() as running:
        yield running


def consented(live: Live) -> Browser:
    """A browser signed in as dev@example.com that has accepted the terms (if needed)."""
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    if "/consent" in str(page.url):
        page = browser.accept(page)
    assert str(page.url) == f"{live.base}/dashboard", page.text
    return browser


def grants(live: Live) -> int:
    return sum(path.endswith("/oauth/token") for _, path in live.tenant.requests)


def patches(live: Live) -> int:
    return sum(method == "PATCH" for method, _ in live.tenant.requests)


def test_withdrawal_in_one_browser_reaches_the_other(live: Live) -> None:
    a, b = consented(live), consented(live)
    page = b.submit(b.go("/consent/withdraw"))
    assert urlsplit(str(page.url)).path == "/consent"
    before = grants(live)
    # A's cookie still says "consented"; the gate refreshes it and sends A to the terms.
    page = a.go("/dashboard")
    assert urlsplit(str(page.url)).path == "/consent", page.text
    assert grants(live) - before == 1
    consent = a.profile()[CLAIM]
    assert consent["given"] is False and consent["withdrawn"] is True
    # A now holds a session issued after the withdrawal: no further grants.
    a.go("/consent")
    assert grants(live) - before == 1


def test_accept_in_one_browser_reaches_the_other(live: Live) -> None:
    a, b = live.browser(), live.browser()
    page_a = a.login(a.go("/dashboard"))
    page_b = b.login(b.go("/dashboard"))
    assert "/consent" in str(page_a.url) and "/consent" in str(page_b.url)
    a.accept(page_a)
    # B need not accept again: its session is refreshed and shows A's consent.
    page = b.go("/dashboard")
    assert str(page.url) == f"{live.base}/dashboard"
    assert b.profile()[CLAIM]["given"] is True


@pytest.mark.parametrize("mode", ["flag", "delete"])
def test_flag_or_delete_ends_every_session(live: Live, mode: str) -> None:
    live.deploy(withdraw_mode=mode)
    a, b = consented(live), consented(live)
    b.submit(b.go("/consent/withdraw"))
    # The refresh is refused (flagged) or finds no user (deleted): A's session ends.
    response = a.client.get(f"{live.base}/dashboard")
    assert response.status_code == 307
    assert urlsplit(response.headers["location"]).path == "/auth/login"
    assert any(
        c.startswith("__session=") and "Max-Age=0" in c
        for c in response.headers.get_list("set-cookie")
    )
    assert a.client.get(f"{live.base}/auth/profile").status_code == 401


def test_logout_ends_every_copy_of_the_cookie(live: Live) -> None:
    browser = consented(live)
    copied = dict(browser.client.cookies.items())
    thief = httpx.Client(cookies=copied, follow_redirects=False, timeout=10)
    try:
        assert thief.get(f"{live.base}/dashboard").status_code == 200
        browser.go("/auth/logout")
        # Not even the claims: /auth/profile honours the mark too.
        assert thief.get(f"{live.base}/auth/profile").status_code == 401
        response = thief.get(f"{live.base}/dashboard")
        assert response.status_code == 307
        assert urlsplit(response.headers["location"]).path == "/auth/login"
    finally:
        thief.close()
    # Signing in again gives a new session that the old mark does not touch.
    again = consented(live)
    assert again.client.get(f"{live.base}/dashboard").status_code == 200


def test_periodic_revalidation_picks_up_a_change_made_elsewhere(live: Live) -> None:
    live.deploy(revalidate_seconds=1)
    browser = consented(live)
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    # An administrator withdraws the consent in the tenant's dashboard, not through the app.
    live.tenant.users.patch(user["user_id"], {"app_metadata": {"consent": {"given": False}}})
    assert browser.client.get(f"{live.base}/dashboard").status_code == 200  # not yet due
    time.sleep(1.2)
    page = browser.go("/dashboard")
    assert urlsplit(str(page.url)).path == "/consent"
    assert browser.profile()[CLAIM] == {"given": False}


@pytest.mark.parametrize("rotate", [True, False], ids=["rotation", "no-rotation"])
def test_accept_then_withdraw_at_once_shows_the_withdrawal(rotate: bool) -> None:
    with live_example(rotate_refresh_tokens=rotate) as live:
        browser = consented(live)
        page = browser.submit(browser.go("/consent/withdraw"))
        # Not the "does not show it" page: the withdrawal's own grant was used.
        assert page.status_code == 200 and urlsplit(str(page.url)).path == "/consent"
        assert browser.profile()[CLAIM]["given"] is False
        page = browser.accept(page)
        assert str(page.url).startswith(f"{live.base}/")
        assert browser.profile()[CLAIM]["given"] is True


@pytest.mark.parametrize("rotate", [True, False], ids=["rotation", "no-rotation"])
def test_accept_and_withdraw_racing_end_matching_the_record(rotate: bool) -> None:
    with live_example(rotate_refresh_tokens=rotate) as live:
        browser = consented(live)
        user = live.tenant.users.by_email("dev@example.com")
        assert user is not None
        for _ in range(3):
            accept_form = forms_of(live, browser, "/consent")
            withdraw_form = forms_of(live, browser, "/consent/withdraw")
            done: list[int] = []

            def post(path: str, data: dict[str, str], done: list[int] = done) -> None:
                done.append(browser.client.post(f"{live.base}{path}", data=data).status_code)

            tabs = [
                threading.Thread(target=post, args=("/consent", accept_form)),
                threading.Thread(target=post, args=("/consent/withdraw", withdraw_form)),
            ]
            for tab in tabs:
                tab.start()
            for tab in tabs:
                tab.join(timeout=15)
            assert len(done) == 2 and all(code < 500 for code in done), done
            record = live.tenant.users.by_email("dev@example.com")
            assert record is not None
            # Whichever came last, the session the browser goes on with matches it.
            assert browser.profile()[CLAIM]["given"] is record["user_metadata"]["consent"]["given"]


def forms_of(live: Live, browser: Browser, path: str) -> dict[str, str]:
    """What the accept or withdraw form posts (the CSRF token is the session's)."""
    _, inputs = forms(browser.go("/consent/withdraw").text)[0]
    token = next(i["value"] for i in inputs if i.get("name") == "csrf_token")
    if path == "/consent/withdraw":
        return {"csrf_token": token}
    return {"csrf_token": token, "return_to": "/", "version": "v1", "agree": "yes",
            "shown": live.shown()}  # fmt: skip


def test_accepts_are_throttled_per_user_and_withdrawals_never(live: Live) -> None:
    live.deploy(accepts_per_minute=3)
    browser = consented(live)
    form = forms_of(live, browser, "/consent")
    written = patches(live)
    # The first of the three was the sign-in's own accept.
    codes = [browser.client.post(f"{live.base}/consent", data=form).status_code for _ in range(2)]
    assert codes == [303, 303]
    refused = browser.client.post(f"{live.base}/consent", data=form)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "many times" in refused.text
    # The same accept again is folded into the first: nothing more was written.
    assert patches(live) == written
    withdraw = forms_of(live, browser, "/consent/withdraw")
    for _ in range(6):
        response = browser.client.post(f"{live.base}/consent/withdraw", data=withdraw)
        assert response.status_code in (302, 303), response.text
    # Six withdrawals, one write: repeats are coalesced, never refused.
    assert patches(live) == written + 1
    assert browser.profile()[CLAIM]["given"] is False


def test_logout_at_the_provider_reaches_the_app(live: Live) -> None:
    browser = consented(live)
    # The user signs out at the provider itself (another app, the provider's own page):
    # the tenant POSTs a logout token naming this login's sid to the app.
    browser.go(f"{live.base}/dev-tenant/v2/logout")
    assert any("sid" in claims for _, claims in live.tenant.state.logout_tokens)
    response = browser.client.get(f"{live.base}/dashboard")
    assert response.status_code == 307
    assert urlsplit(response.headers["location"]).path == "/auth/login"


def test_provider_revoking_every_session_of_the_user(live: Live) -> None:
    a, b = consented(live), consented(live)
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    asyncio.run(live.tenant.end_user_sessions(user["user_id"]))
    client_id, claims = live.tenant.state.logout_tokens[-1]
    assert client_id == DEV_CLIENT_ID
    assert claims["sub"] == user["user_id"] and "sid" not in claims
    for browser in (a, b):
        assert browser.client.get(f"{live.base}/dashboard").status_code == 307
