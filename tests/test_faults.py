"""The fault matrix over real HTTP: the IdP or the Management API down, slow or refusing.
Each fault gives a clear page, never a hang, a loop or lost consent; a later retry works."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest

from consent_middleware._management import MAX_ATTEMPTS
from tests.flow import CLAIM, Live, live_example


@pytest.fixture
def live() -> Iterator[Live]:
    with live_example() as running:
        yield running


def test_discovery_down_then_back(live: Live) -> None:
    live.tenant.fail_next("/.well-known/openid-configuration", 503)
    browser = live.browser()
    page = browser.go("/dashboard")
    assert page.status_code == 502 and "could not be reached" in page.text
    assert "/dev-tenant/" not in str(page.url)
    page = browser.go("/dashboard")
    assert 'name="password"' in page.text  # the retry reaches the login form


def test_slow_idp_is_bounded_by_the_timeout(live: Live) -> None:
    live.deploy(http_timeout=0.5)
    live.tenant.slow_next("/.well-known/openid-configuration", delay=3)
    browser = live.browser()
    started = time.monotonic()
    page = browser.go("/dashboard")
    assert time.monotonic() - started < 2.5
    # The timeout is the operators' to read in the log; the user reads plain words.
    assert page.status_code == 502 and "Sign-in service unavailable" in page.text
    assert "ReadTimeout" not in page.text


def test_jwks_down_at_the_callback_creates_no_session(live: Live) -> None:
    browser = live.browser()
    page = browser.go("/dashboard?keep=1")
    live.tenant.fail_next("/.well-known/jwks.json", 500)
    page = browser.login(page)
    assert page.status_code == 502 and "Please try again" in page.text
    assert browser.client.get(f"{live.base}/auth/profile").status_code == 401
    page = browser.go("/dashboard?keep=1")  # the IdP session is there: straight back
    assert urlsplit(str(page.url)).path == "/consent"


def test_token_endpoint_outage_is_not_called_a_refusal(live: Live) -> None:
    browser = live.browser()
    page = browser.go("/dashboard")
    live.tenant.fail_next("/oauth/token", 503)
    page = browser.login(page)
    assert page.status_code == 502 and "did not answer as expected" in page.text
    assert browser.client.get(f"{live.base}/auth/profile").status_code == 401


def test_management_rate_limit_is_waited_out(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    sub = browser.profile()["sub"]
    live.tenant.fail_next(
        "/api/v2/users/" + quote(sub, safe=""), 429, times=2, headers={"retry-after": "0"}
    )
    page = browser.accept(page)
    assert str(page.url) == f"{live.base}/dashboard"
    assert browser.profile()[CLAIM]["given"] is True


def test_management_timeouts_then_a_retry_saves(live: Live) -> None:
    live.deploy(http_timeout=0.3)
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    sub = browser.profile()["sub"]
    live.tenant.slow_next("/api/v2/users/" + quote(sub, safe=""), delay=1, times=MAX_ATTEMPTS)
    failed = browser.accept(page)
    assert failed.status_code == 503 and "could not save" in failed.text
    time.sleep(1)  # let the slow requests finish before the next attempt
    page = browser.accept(failed)
    assert str(page.url) == f"{live.base}/dashboard"
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and user["user_metadata"]["consent"]["given"] is True


def test_revoked_refresh_token_falls_back_to_prompt_none(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard?r=1"))
    live.tenant.revoke_refresh_tokens()
    hops = len(browser.idp_hops())
    page = browser.accept(page)
    assert str(page.url) == f"{live.base}/dashboard?r=1"
    new_hops = browser.idp_hops()[hops:]
    assert len(new_hops) == 1 and "prompt=none" in new_hops[0]
    assert browser.login_forms_shown() == 1


def test_two_tabs_accepting_at_once(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    form = {
        "agree": "yes",
        "version": "v1",
        "shown": live.shown(),
        "csrf_token": page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0],
        "returnTo": "/dashboard",
    }
    results: list[int] = []
    # The first tab's Management read is slow, so the second tab's accept arrives while the
    # first holds the user's lock: the two are in flight at once on any machine (without
    # it, a fast first tab could finish before the second was sent).
    sub = browser.profile()["sub"]
    live.tenant.slow_next("/api/v2/users/" + quote(sub, safe=""), delay=0.3)
    token_calls_before = sum(p.endswith("/oauth/token") for _, p in live.tenant.requests)

    def tab() -> None:
        response = browser.client.post(f"{live.base}/consent", data=form)
        results.append(response.status_code)

    tabs = [threading.Thread(target=tab) for _ in range(2)]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(timeout=10)
    assert results == [303, 303]
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and user["user_metadata"]["consent"]["version"] == "v1"
    # One refresh grant for the session (plus at most one Management token fetch).
    token_calls = sum(p.endswith("/oauth/token") for _, p in live.tenant.requests)
    assert token_calls - token_calls_before <= 2, live.tenant.requests[-12:]
    assert browser.profile()[CLAIM]["given"] is True
