"""The whole flow over real HTTP against the embedded dev tenant (real keys and signatures)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from consent_middleware._management import MAX_ATTEMPTS
from example_app.api import ORDERS_API
from tests.flow import CLAIM, Browser, Live, live_example


@pytest.fixture
def live() -> Iterator[Live]:
    with live_example() as running:
        yield running


def login_and_accept(live: Live, path: str = "/dashboard?x=1&y=%C3%A9") -> Browser:
    browser = live.browser()
    page = browser.go(path)
    page = browser.login(page)
    assert "/consent" in str(page.url)
    page = browser.accept(page)
    assert page.status_code == 200, page.text
    return browser


def test_first_login_terms_accept_back_on_original_url(live: Live) -> None:
    browser = live.browser()
    page = browser.go("/dashboard?x=1&y=%C3%A9")
    assert "/u/login" in str(page.url) or 'name="password"' in page.text
    page = browser.login(page)
    # Gated: a user without consent is on the terms page, the original URL kept.
    assert urlsplit(str(page.url)).path == "/consent"
    assert parse_qs(urlsplit(str(page.url)).query)["returnTo"] == ["/dashboard?x=1&y=%C3%A9"]
    hops_before_accept = len(browser.idp_hops())
    page = browser.accept(page)
    assert page.status_code == 200
    assert str(page.url) == f"{live.base}/dashboard?x=1&y=%C3%A9"
    assert "x=1&amp;y=%C3%A9" in page.text or "x=1&y=%C3%A9" in page.text
    # The refresh-token grant did it: no browser trip to the IdP, one login form in all.
    assert len(browser.idp_hops()) == hops_before_accept
    assert browser.login_forms_shown() == 1
    consent = browser.profile()[CLAIM]
    assert consent["given"] is True and consent["version"] == "v1"
    assert consent["text_details"] == f"{live.base}/terms"
    assert len(consent["text_sha256"]) == 64 and consent["date"].endswith("Z")
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and user["user_metadata"]["consent"] == consent


def test_without_refresh_token_prompt_none_is_used(live: Live) -> None:
    live.deploy(scope="openid profile email")  # no offline_access, so no refresh token
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    hops = len(browser.idp_hops())
    page = browser.accept(page)
    assert str(page.url) == f"{live.base}/dashboard"
    new_hops = browser.idp_hops()[hops:]
    assert len(new_hops) == 1 and "prompt=none" in new_hops[0]
    assert browser.login_forms_shown() == 1
    assert browser.profile()[CLAIM]["version"] == "v1"


def test_idp_session_gone_falls_back_to_interactive_login(live: Live) -> None:
    live.deploy(scope="openid profile email")
    browser = live.browser()
    page = browser.login(browser.go("/dashboard?keep=me"))
    live.tenant.end_all_sessions()
    page = browser.accept(page)
    # prompt=none said login_required: the login form comes back, consent already stored.
    assert 'name="password"' in page.text
    page = browser.login(page)
    assert str(page.url) == f"{live.base}/dashboard?keep=me"
    assert browser.profile()[CLAIM]["version"] == "v1"


def test_version_bump_sends_consented_user_back_to_terms(live: Live) -> None:
    browser = login_and_accept(live)
    assert browser.go("/dashboard").status_code == 200
    live.deploy(terms_version="v2")
    page = browser.go("/dashboard?again=1")
    assert urlsplit(str(page.url)).path == "/consent"
    assert "changed since you accepted version v1" in page.text
    page = browser.accept(page)
    assert str(page.url) == f"{live.base}/dashboard?again=1"
    assert browser.profile()[CLAIM]["version"] == "v2"
    assert browser.login_forms_shown() == 1


def test_forged_accept_is_refused_and_nothing_written(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    forged = browser.client.post(
        f"{live.base}/consent",
        data={"agree": "yes", "version": "v1", "csrf_token": "x"},
        headers={"origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    no_token = browser.client.post(
        f"{live.base}/consent",
        data={"agree": "yes", "version": "v1"},
    )
    assert no_token.status_code == 403
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and "consent" not in user["user_metadata"]
    assert page.status_code == 200


def test_unticked_box_is_not_consent(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    page = browser.submit(page)  # Accept without the checkbox
    assert page.status_code == 400 and "Tick the box" in page.text
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and "consent" not in user["user_metadata"]


def test_withdraw_revoke_lands_on_terms_again(live: Live) -> None:
    browser = login_and_accept(live)
    page = browser.go("/consent/withdraw")
    page = browser.submit(page)
    assert urlsplit(str(page.url)).path == "/consent"
    consent = browser.profile()[CLAIM]
    assert consent["given"] is False and consent["withdrawn"] is True
    assert urlsplit(str(browser.go("/dashboard").url)).path == "/consent"


def test_withdraw_flag_blocks_the_next_login(live: Live) -> None:
    live.deploy(withdraw_mode="flag")
    browser = login_and_accept(live)
    page = browser.submit(browser.go("/consent/withdraw"))
    assert page.status_code == 200 and str(page.url) == f"{live.base}/"
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and user["app_metadata"]["deleted"] is True
    page = browser.go("/dashboard")
    page = browser.login(page)
    assert page.status_code == 403 and "Access denied" in page.text


def test_withdraw_delete_removes_the_user(live: Live) -> None:
    live.deploy(withdraw_mode="delete")
    browser = login_and_accept(live)
    sub = browser.profile()["sub"]
    page = browser.submit(browser.go("/consent/withdraw"))
    assert str(page.url) == f"{live.base}/"
    assert live.tenant.users.get(sub) is None
    assert browser.client.get(f"{live.base}/auth/profile").status_code == 401


def test_management_outage_shows_try_again_and_a_retry_succeeds(live: Live) -> None:
    browser = live.browser()
    page = browser.login(browser.go("/dashboard"))
    sub = browser.profile()["sub"]
    live.tenant.fail_next("/api/v2/users/" + quote(sub, safe=""), 503, times=MAX_ATTEMPTS)
    failed = browser.accept(page)
    assert failed.status_code == 503 and "could not save" in failed.text
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and "consent" not in user["user_metadata"]
    page = browser.accept(failed)
    assert str(page.url) == f"{live.base}/dashboard"


def test_missing_action_stops_with_an_explanation_not_a_loop(live: Live) -> None:
    live.tenant.consent_claim = "https://other.example.com/not-the-claim"
    browser = live.browser()
    page = browser.accept(browser.login(browser.go("/dashboard")))
    assert page.status_code == 502
    assert "post-login Action" in page.text


def test_logout_ends_both_sessions(live: Live) -> None:
    browser = login_and_accept(live)
    page = browser.go("/auth/logout")
    assert str(page.url) == f"{live.base}/"
    assert browser.client.get(f"{live.base}/auth/profile").status_code == 401
    # The IdP session is gone too: the next login shows the form again.
    page = browser.go("/dashboard")
    assert 'name="password"' in page.text


def test_tampered_cookie_is_logged_out(live: Live) -> None:
    browser = login_and_accept(live)
    value = browser.client.cookies["__session"]
    browser.client.cookies.set("__session", value[:-5] + "AAAAA", domain="127.0.0.1")
    response = browser.client.get(f"{live.base}/dashboard")
    assert response.status_code == 307


def test_api_clients_get_json(live: Live) -> None:
    browser = live.browser()
    response = browser.client.get(f"{live.base}/api/me", headers={"accept": "application/json"})
    assert response.status_code == 401 and response.json()["error"] == "login_required"
    browser.login(browser.go("/dashboard"))
    response = browser.client.get(f"{live.base}/api/me", headers={"accept": "application/json"})
    assert response.status_code == 403
    assert response.json()["consent_url"] == f"{live.base}/consent?returnTo=%2Fapi%2Fme"


def test_idp_error_at_callback_renders_a_page(live: Live) -> None:
    browser = live.browser()
    browser.go("/auth/login")  # sets a transaction cookie; read its state
    state = next(c for c in browser.client.cookies if c.startswith("__txn_"))[len("__txn_") :]
    response = browser.client.get(
        f"{live.base}/auth/callback",
        params={"state": state, "error": "access_denied", "error_description": "<b>no</b>"},
    )
    assert response.status_code == 403
    assert "&lt;b&gt;no&lt;/b&gt;" in response.text


def test_callback_naming_another_issuer_is_refused(live: Live) -> None:
    browser = live.browser()
    browser.go("/auth/login")
    state = next(c for c in browser.client.cookies if c.startswith("__txn_"))[len("__txn_") :]
    response = browser.client.get(
        f"{live.base}/auth/callback",
        params={"state": state, "code": "whatever", "iss": "https://evil.example/"},
    )
    assert response.status_code == 400 and "different identity provider" in response.text
    assert not any(path.endswith("/oauth/token") for _, path in live.tenant.requests)


def test_withdraw_delete_when_the_user_is_already_gone(live: Live) -> None:
    # An earlier attempt deleted the user, but its answer never arrived: no dead end.
    live.deploy(withdraw_mode="delete")
    browser = login_and_accept(live)
    live.tenant.users.delete(browser.profile()["sub"])
    page = browser.submit(browser.go("/consent/withdraw"))
    assert str(page.url) == f"{live.base}/"
    assert browser.client.get(f"{live.base}/auth/profile").status_code == 401


@pytest.mark.parametrize(("audience", "status"), [("", 401), (ORDERS_API, 200)])
def test_the_dashboard_widget_calls_its_api_with_or_without_an_audience(
    live: Live, audience: str, status: int
) -> None:
    # Without AUTH0_AUDIENCE the token is not one the API accepts: the widget says so (the
    # API's own 401), it is never a 500; with it, the API answers the orders.
    live.deploy(audience=audience)
    browser = login_and_accept(live)
    widget = browser.client.get(f"{live.base}/api/widget")
    assert widget.status_code == 200, widget.text
    assert widget.json()["status"] == status
    assert ("orders" in widget.json()["api"]) is (status == 200)


def test_the_example_keeps_pages_about_the_user_out_of_shared_caches(live: Live) -> None:
    browser = login_and_accept(live)
    for path in ("/dashboard", "/api/me"):
        answer = browser.client.get(f"{live.base}{path}")
        assert answer.status_code == 200 and "no-store" in answer.headers["cache-control"], path
    history = browser.client.get(f"{live.base}/consent/history")
    assert f'<a href="{live.base}/">Back to the site</a>' in history.text
