"""Proof of consent over real HTTP against the dev tenant: the record in app_metadata with its
history, optional purposes gated per path, the history page, the receipt, and the ledger."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser as PlaywrightBrowser

from consent_middleware import Settings
from consent_middleware._exceptions import ConfigurationError
from consent_middleware._ledger import EntryState, Ledger
from consent_middleware._purposes import Purpose
from consent_middleware._record import shown_sha256
from tests.flow import CLAIM, Browser, Live, forms, live_example

MARKETING = Purpose("marketing", "Newsletter", "Send me the newsletter.", "1")
ANALYTICS = Purpose("analytics", "Statistics", "Count my visits.", "1")
BY_ID = {purpose.id: purpose for purpose in (MARKETING, ANALYTICS)}
LEDGER_KEY = "ledger-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_example() as running:
        deploy(running, tmp_path)
        yield running


def deploy(live: Live, tmp_path: Path, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "purposes": (MARKETING, ANALYTICS),
        "require": (("/newsletter*", ("marketing",)), ("/stats*", ("analytics", "marketing"))),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "ledger_key": LEDGER_KEY,
        "public_paths": ("/", "/terms"),
    }
    values.update(overrides)
    live.deploy(**values)


def ledger_entries(tmp_path: Path, sub: str) -> tuple[bool, list[Any]]:
    async def read() -> tuple[bool, list[Any]]:
        ledger = await Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}", LEDGER_KEY)
        try:
            return (await ledger.verify()).ok, await ledger.history(sub)
        finally:
            await ledger.close()

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def accept(browser: Browser, page: httpx.Response, **purposes: str) -> httpx.Response:
    assert 'name="agree"' in page.text, page.text
    fields = {f"purpose_{name}": value for name, value in purposes.items()}
    return browser.submit(page, 0, agree="yes", **fields)


def signed_in(live: Live, path: str = "/dashboard") -> tuple[Browser, httpx.Response]:
    browser = live.browser()
    return browser, browser.login(browser.go(path))


def stored(live: Live) -> dict[str, Any]:
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    consent: dict[str, Any] = user["app_metadata"]["consent"]
    return consent


def history_form(browser: Browser, action: str) -> httpx.Response:
    page = browser.go("/consent/history")
    for index, (attrs, inputs) in enumerate(forms(page.text)):
        if attrs.get("action", "").endswith("/purposes") and any(
            i.get("value") == "marketing" for i in inputs
        ):
            return browser.submit(page, index, action=action)
    raise AssertionError("no form for marketing on the history page")


def test_give_withdraw_give_again_three_events_everywhere(live: Live, tmp_path: Path) -> None:
    browser, page = signed_in(live)
    # The terms page offers the purposes unticked.
    assert 'name="purpose_marketing" value="yes">' in page.text
    assert "checked" not in page.text
    page = accept(browser, page, marketing="yes")
    assert urlsplit(str(page.url)).path == "/dashboard", page.text
    assert browser.go("/newsletter").status_code == 200
    history_form(browser, "withdraw")
    page = browser.go("/newsletter")
    assert urlsplit(str(page.url)).path == "/consent/purposes"
    page = history_form(browser, "give")
    assert browser.go("/newsletter").status_code == 200

    record = stored(live)
    events = record["history"]
    assert [(e["action"], e["terms"]) for e in events] == [
        ("given", True), ("withdrawn", False), ("given", False)
    ]  # fmt: skip
    assert [e["purposes"]["marketing"]["given"] for e in events] == [True, False, True]
    assert events[0]["purposes"]["analytics"]["given"] is False  # declined, recorded
    assert [e["method"] for e in events] == ["terms_page", "history_page", "history_page"]
    # The claim carries the current state only.
    claim = browser.profile()[CLAIM]
    assert "history" not in claim and claim["purposes"]["marketing"]["given"] is True
    # The history page lists the three events, the ledger holds them, confirmed, verified.
    listed = browser.go("/consent/history").text
    assert listed.count("<tr>") == 1 + 3  # the header row and one per event
    ok, entries = ledger_entries(tmp_path, record_sub(live))
    assert ok and [e.state for e in entries] == [EntryState.CONFIRMED] * 3
    assert [e.event.as_record() for e in entries if e.event] == events


def record_sub(live: Live) -> str:
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    return str(user["user_id"])


def test_a_declined_purpose_gates_only_its_paths(live: Live) -> None:
    browser, page = signed_in(live, "/newsletter?issue=7")
    page = accept(browser, page)  # no purpose ticked
    # Back on /newsletter: the purpose page (not the terms) asks for marketing only.
    url = urlsplit(str(page.url))
    assert url.path == "/consent/purposes"
    assert parse_qs(url.query) == {"need": ["marketing"], "returnTo": ["/newsletter?issue=7"]}
    assert 'value="marketing"' in page.text and 'value="analytics"' not in page.text
    assert browser.go("/dashboard").status_code == 200
    api = browser.client.get(f"{live.base}/stats/x", headers={"accept": "application/json"})
    assert api.status_code == 403
    assert api.json()["error"] == "consent_required"
    assert api.json()["purposes"] == ["analytics", "marketing"]
    # Giving it on the purpose page lands on the page first asked for.
    page = browser.submit(page, purpose="marketing")
    assert str(page.url).endswith("/newsletter?issue=7")


def test_a_purpose_version_bump_asks_for_that_purpose_only(live: Live, tmp_path: Path) -> None:
    browser, page = signed_in(live)
    accept(browser, page, marketing="yes")
    deploy(live, tmp_path, purposes=(Purpose("marketing", "News", "Now weekly.", "2"), ANALYTICS))
    assert browser.go("/dashboard").status_code == 200
    page = browser.go("/newsletter")
    assert urlsplit(str(page.url)).path == "/consent/purposes" and "Now weekly." in page.text


def test_a_consent_the_user_wrote_themself_changes_nothing(live: Live) -> None:
    browser = live.browser()
    browser.go("/")  # the user exists once they have signed in: do so, then forge
    page = browser.login(browser.go("/dashboard"))
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    # What a token with update:current_user_metadata may write (Auth0 allows it).
    forged = {"given": True, "version": "v1", "date": "2020-01-01T00:00:00.000Z",
              "text_sha256": "0" * 64}  # fmt: skip
    live.tenant.users.patch(user["user_id"], {"user_metadata": {"consent": forged}})
    other = live.browser()
    page = other.login(other.go("/dashboard"))
    assert urlsplit(str(page.url)).path == "/consent"


def test_the_receipt_names_controller_principal_purposes_and_text(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page, analytics="yes")
    answer = browser.client.get(f"{live.base}/consent/receipt.json")
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].startswith("attachment")
    receipt = answer.json()
    assert receipt["principal_id"] == record_sub(live)
    assert receipt["controller"]["url"] == live.base
    assert receipt["terms"]["version"] == "v1" and receipt["terms"]["given"] is True
    assert len(receipt["terms"]["text_sha256"]) == 64
    assert {p["id"]: p["given"] for p in receipt["purposes"]} == {
        "marketing": False, "analytics": True
    }  # fmt: skip
    assert receipt["collection_method"] == "terms_page" and len(receipt["events"]) == 1
    again = browser.client.get(f"{live.base}/consent/receipt.json").json()
    assert again["receipt_id"] == receipt["receipt_id"]  # the same record, the same id


def test_the_claim_stays_the_same_size_as_the_history_grows(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page, marketing="yes")
    size = len(json.dumps(browser.profile()[CLAIM], sort_keys=True))
    for action in ("withdraw", "give") * 3:
        history_form(browser, action)
    assert len(stored(live)["history"]) == 7
    assert len(json.dumps(browser.profile()[CLAIM], sort_keys=True)) == size


def test_a_ledger_that_is_down_saves_nothing_anywhere(live: Live, tmp_path: Path) -> None:
    deploy(live, tmp_path, ledger_url="postgresql://ledger@127.0.0.1:1/ledger")
    browser, page = signed_in(live)
    page = accept(browser, page)
    assert page.status_code == 503 and "nothing was changed" in page.text
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None and "consent" not in user["app_metadata"]
    # Back up: the same click works.
    deploy(live, tmp_path)
    page = accept(browser, browser.go("/consent?returnTo=/dashboard"))
    assert urlsplit(str(page.url)).path == "/dashboard"


def test_two_tabs_choosing_different_purposes_keep_both_events(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page)
    forms_page = browser.go("/consent/history")
    token = forms_page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    results: list[int] = []

    def tab(purpose: str) -> None:
        form = {"csrf_token": token, "purpose": purpose, "action": "give", "return_to": "/",
                "shown": shown_sha256([BY_ID[purpose]])}  # fmt: skip
        results.append(browser.client.post(f"{live.base}/consent/purposes", data=form).status_code)

    tabs = [threading.Thread(target=tab, args=(p,)) for p in ("marketing", "analytics")]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(timeout=15)
    assert sorted(results) == [303, 303]
    events = stored(live)["history"]
    given = {next(iter(e["purposes"])) for e in events[1:]}
    assert len(events) == 3 and given == {"marketing", "analytics"}
    state = stored(live)["purposes"]
    assert state["marketing"]["given"] is True and state["analytics"]["given"] is True


def test_the_purposes_page_reads_every_need_and_says_only_what_is_true(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page, marketing="yes")
    # Each ``need`` counts, not only the last one: analytics is still to be asked for.
    page = browser.go("/consent/purposes?need=marketing&need=analytics&need=analytics")
    assert 'value="analytics"' in page.text and 'value="marketing"' not in page.text
    assert page.text.count('value="analytics"') == 1
    assert "already allowed" not in page.text
    page = browser.go("/consent/purposes?need=analytics&need=marketing")
    assert 'value="analytics"' in page.text
    # All named and given: that much is true.
    assert "already allowed" in browser.go("/consent/purposes?need=marketing").text
    # A link that names nothing: no form, and no claim that anything was allowed.
    for query in ("?need=", "?need=&need=", ""):
        page = browser.go(f"/consent/purposes{query}")
        assert page.status_code == 200, query
        assert "already allowed" not in page.text and 'name="purpose"' not in page.text
        assert "does not ask for any permission" in page.text


def test_a_purpose_form_from_an_earlier_sign_in_leads_back_to_its_page(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page)
    stale = "0" * 64  # another session's token, as a tab opened before a new sign-in has
    form = {"csrf_token": stale, "purpose": "analytics", "action": "give", "return_to": "/news"}
    refused = browser.client.post(f"{live.base}/consent/purposes", data=form)
    assert refused.status_code == 403 and "Page out of date" in refused.text
    # The purposes page again, asking for what the form was about.
    assert 'href="/consent/purposes?need=analytics&amp;returnTo=' in refused.text, refused.text
    toggle = {**form, "method": "history_page", "return_to": "/consent/history"}
    refused = browser.client.post(f"{live.base}/consent/purposes", data=toggle)
    assert refused.status_code == 403 and "/consent/history" in refused.text
    assert "need=" not in refused.text
    assert stored(live)["history"][-1]["action"] == "given"  # nothing recorded since


def test_unknown_purposes_are_refused(live: Live) -> None:
    browser, page = signed_in(live)
    accept(browser, page)
    assert browser.go("/consent/purposes?need=nope").status_code == 400
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": token, "purpose": "nope", "action": "give"}
    assert browser.client.post(f"{live.base}/consent/purposes", data=form).status_code == 400
    with pytest.raises(ConfigurationError, match=r"CONSENT_REQUIRE.*'nope'"):
        Settings.from_env(
            {
                "AUTH0_DOMAIN": "t.example.com", "AUTH0_CLIENT_ID": "c",
                "AUTH0_CLIENT_SECRET": "s", "AUTH0_SECRET": "x" * 32,
                "APP_BASE_URL": "https://a.example.com", "CONSENT_CLAIM": CLAIM,
                "CONSENT_TERMS_VERSION": "1", "CONSENT_TERMS_URL": "https://a.example.com/t",
                "CONSENT_REQUIRE": "/news*=nope",
            }
        )  # fmt: skip


@pytest.mark.browser
def test_in_chromium_give_withdraw_give_and_the_newsletter(
    chromium: PlaywrightBrowser, live: Live, tmp_path: Path
) -> None:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{live.base}/newsletter")
    page.fill('input[name="email"]', "dev@example.com")
    page.fill('input[name="password"]', "dev-password")
    page.click('button[type="submit"]')
    page.wait_for_url(f"{live.base}/consent?*")
    marketing = page.get_by_role("checkbox", name="Newsletter")
    assert (
        not marketing.is_checked()
        and not page.get_by_role("checkbox", name="Statistics").is_checked()
    )
    page.locator('input[name="agree"]').check()
    marketing.check()
    page.get_by_role("button", name="Accept").click()
    page.wait_for_url(f"{live.base}/newsletter")
    page.goto(f"{live.base}/consent/history")
    page.get_by_role("button", name="Withdraw Newsletter").click()
    page.wait_for_url(f"{live.base}/consent/history")
    # Withdrawn: the newsletter asks for that purpose alone, the rest of the site is open.
    page.goto(f"{live.base}/newsletter")
    assert "/consent/purposes" in page.url and "need=marketing" in page.url
    page.goto(f"{live.base}/dashboard")
    assert page.url == f"{live.base}/dashboard"
    page.goto(f"{live.base}/consent/history")
    page.get_by_role("button", name="Allow Newsletter").click()
    page.wait_for_url(f"{live.base}/consent/history")
    assert page.locator("tbody tr").count() == 3
    page.goto(f"{live.base}/newsletter")
    assert page.url == f"{live.base}/newsletter"
    claim = json.loads(page.goto(f"{live.base}/auth/profile").text())[CLAIM]  # type: ignore[union-attr]
    assert "history" not in claim and claim["purposes"]["marketing"]["given"] is True
    assert len(stored(live)["history"]) == 3
    ok, entries = ledger_entries(tmp_path, record_sub(live))
    assert ok and len(entries) == 3
    context.close()


def test_a_choice_after_another_is_never_folded_into_an_older_one(live: Live) -> None:
    # Withdraw marketing, give it back with analytics, withdraw it again within the minute:
    # the last withdrawal is a new choice (it was folded into the first one once).
    browser, page = signed_in(live)
    accept(browser, page, marketing="yes")
    history_form(browser, "withdraw")
    page = browser.go("/stats")
    assert urlsplit(str(page.url)).path == "/consent/purposes"
    page = browser.submit(page, purpose="analytics")  # the page asks for both; give both
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": token, "action": "give", "return_to": "/stats",
            "purpose": ["analytics", "marketing"],
            "shown": shown_sha256([ANALYTICS, MARKETING])}  # fmt: skip
    browser.client.post(f"{live.base}/consent/purposes", data=form)
    assert stored(live)["purposes"]["marketing"]["given"] is True
    before = len(stored(live)["history"])
    history_form(browser, "withdraw")
    record = stored(live)
    assert len(record["history"]) == before + 1
    assert record["purposes"]["marketing"]["given"] is False


def edit_record(live: Live, change: Any) -> None:
    """As an administrator editing app_metadata by hand in the tenant's dashboard."""
    user = live.tenant.users.by_email("dev@example.com")
    assert user is not None
    consent = dict(user["app_metadata"]["consent"])
    change(consent)
    live.tenant.users.patch(user["user_id"], {"app_metadata": {"consent": consent}})


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.__setitem__("purposes", ["marketing"]),
        lambda c: c.__setitem__("history", [{**c["history"][0], "date": 10**20}, "junk"]),
        lambda c: c.__setitem__("history", {"not": "a list"}),
    ],
    ids=["purposes-a-list", "date-out-of-range", "history-a-dict"],
)
def test_a_record_edited_by_hand_never_breaks_a_page_or_a_choice(live: Live, change: Any) -> None:
    browser, page = signed_in(live)
    accept(browser, page)
    edit_record(live, change)
    assert browser.go("/consent/history").status_code == 200
    assert browser.client.get(f"{live.base}/consent/receipt.json").status_code == 200
    # And the next choice still goes through, on top of what is there.
    history_form(browser, "give")
    assert stored(live)["purposes"]["marketing"]["given"] is True


def test_the_purpose_page_sends_to_the_terms_first_keeping_the_whole_address(live: Live) -> None:
    browser, _ = signed_in(live)  # signed in, terms not accepted
    target = "/search?q=a&page=2"
    answer = browser.client.get(
        f"{live.base}/consent/purposes", params={"need": "marketing", "returnTo": target}
    )
    assert answer.status_code == 303
    assert parse_qs(urlsplit(answer.headers["location"]).query)["returnTo"] == [target]


def test_withdrawing_a_purpose_is_never_throttled(live: Live, tmp_path: Path) -> None:
    deploy(live, tmp_path, accepts_per_minute=1)
    browser, page = signed_in(live)
    accept(browser, page, marketing="yes")  # the one give allowed this minute
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": token, "action": "give", "purpose": "analytics", "return_to": "/",
            "shown": shown_sha256([ANALYTICS])}  # fmt: skip
    assert browser.client.post(f"{live.base}/consent/purposes", data=form).status_code == 429
    before = len(stored(live)["history"])
    history_form(browser, "withdraw")
    assert len(stored(live)["history"]) == before + 1
    assert stored(live)["purposes"]["marketing"]["given"] is False
