"""The consent routes through the composition root, one HTTP exchange at a time (respx): the
records written, the CSRF and version checks, the Management API's failures, and what each
withdrawal mode does. ID tokens are really signed and really verified."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest
import respx

from consent_middleware import Session, TokenSet
from consent_middleware._csrf import CSRF
from consent_middleware._engine import Engine
from consent_middleware._events import CollectionMethod, ConsentAction, ConsentEvent
from consent_middleware._exceptions import SharedStateError
from consent_middleware._ledger import EntryState, Ledger, LedgerEntry
from consent_middleware._management import MAX_ATTEMPTS
from consent_middleware._purposes import Purpose as ConsentPurpose
from consent_middleware._record import ConsentWriter, applied, iso_date, patch_body, terms_statement
from consent_middleware._revocation import Revocation
from consent_middleware._state import LocalState
from consent_middleware._transactions import Purpose
from tests.conftest import CLAIM, DOMAIN, ISSUER, Sleeps, idp, make_settings
from tests.keys import SigningKey, id_token_claims
from tests.test_session import jar

pytestmark = pytest.mark.anyio

APP = "https://app.example.com"
SUB = "auth0|user1"
TOKEN_URL = f"{DOMAIN}/oauth/token"
USER_URL = f"{DOMAIN}/api/v2/users/auth0%7Cuser1"
ACCEPTED = {"given": True, "version": "v2", "date": "2026-01-01T00:00:00.000Z"}
LEDGER_KEY = "ledger-key-0123456789abcdef0123456789"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# ---------------------------------------------------------------------------------------------
# The records


def terms_event(settings: Any, action: ConsentAction, at: int = 1767225600123) -> ConsentEvent:
    writer = ConsentWriter(settings, None)  # type: ignore[arg-type]
    return writer.terms_event(action, CollectionMethod.TERMS_PAGE, at)


def test_an_accept_records_the_version_the_terms_and_their_digest() -> None:
    settings = make_settings()
    before = int(time.time() * 1000)
    event = terms_event(settings, ConsentAction.GIVEN, before)
    record = applied({}, event, 50)
    state = {k: v for k, v in record.items() if k != "history"}
    assert state == {
        "given": True,
        "withdrawn": False,
        "version": "v2",
        "date": iso_date(before),
        "text_details": "https://app.example.com/terms",
        "text_sha256": hashlib.sha256(terms_statement(settings).encode()).hexdigest(),
        "purposes": {},
    }
    assert terms_statement(settings) == (
        "I have read and accept version v2 of the terms published at https://app.example.com/terms."
    )
    assert DATE.fullmatch(state["date"]), state["date"]
    written = datetime.strptime(state["date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(written.timestamp() * 1000 - before) < 1
    assert record["history"] == [event.as_record()]
    # user_metadata mirrors the state; app_metadata holds it with the history.
    body = patch_body(record)
    assert body["user_metadata"]["consent"] == state
    assert body["app_metadata"]["consent"] == record


def test_custom_terms_text_is_the_statement_and_its_digest_is_recorded() -> None:
    text = "Ich stimme den Bedingungen zu (Version 7) — mit Umlauten: äöü."
    settings = make_settings(terms_text=text, terms_version="7")
    event = terms_event(settings, ConsentAction.GIVEN)
    assert terms_statement(settings) == text
    assert event.version == "7"
    assert event.text_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    default = terms_event(make_settings(terms_version="7"), ConsentAction.GIVEN)
    assert default.text_sha256 != event.text_sha256


def test_a_withdrawal_keeps_the_history_and_the_history_is_bounded() -> None:
    settings = make_settings()
    record: dict[str, Any] = {}
    for i in range(7):
        action = ConsentAction.GIVEN if i % 2 == 0 else ConsentAction.WITHDRAWN
        record = applied(record, terms_event(settings, action, 1000 + i), 5)
    assert record["given"] is True and record["withdrawn"] is False
    assert [e["date"] for e in record["history"]] == [1002, 1003, 1004, 1005, 1006]
    withdrawn = applied(record, terms_event(settings, ConsentAction.WITHDRAWN, 2000), 5)
    assert withdrawn["given"] is False and withdrawn["withdrawn"] is True
    assert withdrawn["history"][-1]["action"] == "withdrawn"
    # A malformed stored entry is skipped, never fatal.
    assert (
        applied(
            {"history": ["junk", {"action": "?"}]}, terms_event(settings, ConsentAction.GIVEN), 5
        )["history"][0]["action"]
        == "given"
    )


# ---------------------------------------------------------------------------------------------
# The provider: discovery, the token endpoint, and the one user's record


class Tenant:
    """The provider's side: a post-login Action copies the state of ``app_metadata.consent``
    into the ID token, so a grant after a PATCH shows what the PATCH wrote."""

    def __init__(self, mock: respx.MockRouter, key: SigningKey) -> None:
        self.key = key
        self.user_metadata: dict[str, Any] = {"consent": ACCEPTED}
        self.app_metadata: dict[str, Any] = {"consent": ACCEPTED}
        self.deleted = False
        # Set to answer the next PATCH / DELETE with this status instead of doing it.
        self.patch_status: int | None = None
        self.patch_error_code: str | None = None  # Auth0's errorCode with that status
        self.delete_status: int | None = None
        # Set to answer a PATCH with this status after applying it (a gateway that timed
        # out after Auth0 committed), and a GET after a PATCH with this one.
        self.lost_answer_status: int | None = None
        self.read_back_status: int | None = None
        idp(mock, [key])
        self.token = mock.post(TOKEN_URL).mock(side_effect=self._token)
        self.patch = mock.patch(USER_URL).mock(side_effect=self._patch)
        self.get = mock.get(USER_URL).mock(side_effect=self._get)
        self.delete = mock.delete(USER_URL).mock(side_effect=self._delete)
        self.calls = mock.calls

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        auth = request.headers.get("authorization")
        if form["grant_type"] == ["client_credentials"]:
            if auth != basic("m2m", "m2m-secret"):
                return httpx.Response(401, json={"error": "access_denied"})
            if form["audience"] != [f"{DOMAIN}/api/v2/"]:
                return httpx.Response(403, json={"error": "access_denied"})
            return httpx.Response(200, json={"access_token": "mgmt-token", "expires_in": 86400})
        if auth != basic("client-1", "client-secret-1") or form["grant_type"] != ["refresh_token"]:
            return httpx.Response(400, json={"error": "invalid_client"})
        if self.deleted or form["refresh_token"] != ["rt-1"]:
            return httpx.Response(400, json={"error": "invalid_grant"})
        claims = id_token_claims(ISSUER, "client-1", nonce=None)
        if "consent" in self.app_metadata:
            stored = self.app_metadata["consent"]
            claims[CLAIM] = {k: v for k, v in stored.items() if k != "history"}
        return httpx.Response(
            200,
            json={
                "id_token": self.key.sign(claims, access_token="at-2"),
                "access_token": "at-2",
                "expires_in": 3600,
                "token_type": "Bearer",
            },
        )

    def _authorized(self, request: httpx.Request) -> bool:
        sent: str | None = request.headers.get("authorization")
        return sent == "Bearer mgmt-token"

    def _patch(self, request: httpx.Request) -> httpx.Response:
        if not self._authorized(request):
            return httpx.Response(401, json={"message": "Invalid token"})
        if self.patch_status is not None:
            body = {"message": "not today", "errorCode": self.patch_error_code}
            return httpx.Response(self.patch_status, json=body)
        if self.deleted:
            return httpx.Response(404, json={"message": "The user does not exist."})
        body = json.loads(request.content)
        self.user_metadata.update(body.get("user_metadata", {}))
        self.app_metadata.update(body.get("app_metadata", {}))
        if self.lost_answer_status is not None:
            return httpx.Response(self.lost_answer_status, text="upstream timed out")
        return httpx.Response(200, json={"user_id": SUB, "user_metadata": self.user_metadata})

    def _get(self, request: httpx.Request) -> httpx.Response:
        if not self._authorized(request):
            return httpx.Response(401, json={"message": "Invalid token"})
        if self.deleted:
            return httpx.Response(404, json={"message": "The user does not exist."})
        if self.read_back_status is not None and self.patch.called:
            return httpx.Response(self.read_back_status, json={"message": "not today"})
        user = {"user_id": SUB, "user_metadata": self.user_metadata}
        return httpx.Response(200, json={**user, "app_metadata": self.app_metadata})

    def _delete(self, request: httpx.Request) -> httpx.Response:
        if not self._authorized(request):
            return httpx.Response(401, json={"message": "Invalid token"})
        if self.delete_status is not None:
            return httpx.Response(self.delete_status, json={"message": "not today"})
        self.deleted = True
        return httpx.Response(204)

    def patched(self) -> list[dict[str, Any]]:
        return [json.loads(call.request.content) for call in self.patch.calls]

    def refresh_grants(self) -> int:
        return sum(b"grant_type=refresh_token" in call.request.content for call in self.token.calls)


Build = Callable[..., Engine]


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    """Engines wired by the composition root with a Management client of their own."""
    made: list[Engine] = []

    def create(**overrides: object) -> Engine:
        settings = make_settings(mgmt_client_id="m2m", mgmt_client_secret="m2m-secret", **overrides)
        engine = Engine.create(settings)
        engine.management.sleep = Sleeps()
        made.append(engine)
        return engine

    try:
        yield create
    finally:
        for engine in made:
            await engine.aclose()


@pytest.fixture
def tenant(signing_key: SigningKey) -> Iterator[Tenant]:
    with respx.mock(assert_all_called=False) as mock:
        yield Tenant(mock, signing_key)


# ---------------------------------------------------------------------------------------------
# Requests, straight to the composition root


def session(consent: Mapping[str, Any] | None = None) -> Session:
    claims: dict[str, Any] = {"sub": SUB, "email": "user@example.com"}
    if consent is not None:
        claims[CLAIM] = dict(consent)
    return Session.from_claims(
        claims,
        TokenSet(
            access_token="at-1",
            id_token="id-token-1",
            refresh_token="rt-1",
            expires_at=int(time.time()) + 3600,
            scope="openid profile email offline_access",
        ),
    )


async def cookies_for(engine: Engine, current: Session) -> dict[str, str]:
    return jar(await engine.sessions.save(current, {}))


async def call(
    engine: Engine,
    method: str,
    path: str,
    *,
    cookies: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    query: str = "",
    origin: str | None = APP,
    root_path: str = "",
    path_holds_root: bool = True,
) -> httpx.Response:
    """``path`` below the app's mount at ``root_path``: in the scope's path too, as uvicorn's
    --root-path and Starlette's Mount send it, or beside it (``path_holds_root=False``), as
    FastAPI(root_path=...) behind a proxy that strips the prefix does."""
    body = urlencode(form).encode() if form is not None else b""
    headers = [(b"host", b"app.example.com"), (b"accept", b"text/html")]
    if form is not None:
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
    if method == "POST" and origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookies:
        headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    full = root_path + path if path_holds_root else path
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "https", "path": full, "raw_path": full.encode(),
        "query_string": query.encode(), "root_path": root_path, "headers": headers,
        "server": ("app.example.com", 443), "client": ("127.0.0.1", 1),
    }  # fmt: skip
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await engine.serve_own_route(scope, receive, send, path)
    start, *rest = sent
    content = b"".join(message.get("body", b"") for message in rest)
    return httpx.Response(start["status"], headers=start["headers"], content=content)


def hidden(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert found is not None, f"no {name} field on the page"
    return found.group(1)


def session_cookies(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith("__session")]


async def accept_form(engine: Engine, cookies: Mapping[str, str], **fields: str) -> dict[str, str]:
    """The terms page's own form, ticked, with ``fields`` changed."""
    page = await call(engine, "GET", "/consent", cookies=cookies, query="returnTo=%2Fdashboard")
    assert page.status_code == 200, page.text
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "return_to": hidden(page, "return_to"),
        "version": hidden(page, "version"),
        "shown": hidden(page, "shown"),
        "agree": "yes",
    }
    form.update(fields)
    return form


async def withdraw_form(engine: Engine, cookies: Mapping[str, str]) -> dict[str, str]:
    page = await call(engine, "GET", "/consent/withdraw", cookies=cookies)
    assert page.status_code == 200, page.text
    return {"csrf_token": hidden(page, "csrf_token")}


# ---------------------------------------------------------------------------------------------
# The terms page and accept


async def test_terms_page_shows_the_form_for_this_version(build: Build, tenant: Tenant) -> None:
    engine = build()
    current = session()
    cookies = await cookies_for(engine, current)
    page = await call(engine, "GET", "/consent", cookies=cookies, query="returnTo=%2Fdashboard")
    assert page.status_code == 200
    assert hidden(page, "version") == "v2"
    assert hidden(page, "return_to") == f"{APP}/dashboard"
    csrf = CSRF(engine.settings.secret, engine.settings.app_base_url)
    assert hidden(page, "csrf_token") == csrf.token(current)
    assert "I have read and accept version v2" in page.text
    assert "user@example.com" in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_terms_without_a_session_starts_a_login_that_comes_back(
    build: Build, tenant: Tenant
) -> None:
    engine = build()
    response = await call(engine, "GET", "/consent", query="returnTo=%2Fdashboard%3Fx%3D1")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{DOMAIN}/authorize"
    state = parse_qs(location.query)["state"][0]
    set_cookies = [c.encode() for c in response.headers.get_list("set-cookie")]
    tx = engine.transactions.load(state, jar(set_cookies))
    assert tx is not None and tx.purpose is Purpose.LOGIN
    assert tx.return_to == f"{APP}/consent?returnTo=%2Fdashboard%3Fx%3D1"


@pytest.mark.parametrize("path_holds_root", [True, False], ids=["in path", "beside path"])
@pytest.mark.parametrize("page", ["/consent", "/consent/withdraw", "/consent/history"])
async def test_a_signed_out_visit_below_a_prefix_comes_back_to_the_same_page(
    build: Build, tenant: Tenant, page: str, path_holds_root: bool
) -> None:
    # APP_BASE_URL ends in the prefix and the request's path may hold it too: the return
    # address is the page's own, never the prefix twice ("/app/app/consent", a 404).
    engine = build(app_base_url=f"{APP}/app")
    response = await call(
        engine,
        "GET",
        page,
        query="returnTo=%2Fapp%2Fdashboard",
        root_path="/app",
        path_holds_root=path_holds_root,
    )
    assert response.status_code == 302
    state = parse_qs(urlsplit(response.headers["location"]).query)["state"][0]
    set_cookies = [c.encode() for c in response.headers.get_list("set-cookie")]
    tx = engine.transactions.load(state, jar(set_cookies))
    assert tx is not None
    assert tx.return_to == f"{APP}/app{page}?returnTo=%2Fapp%2Fdashboard"


async def test_head_without_a_session_is_answered_like_get(build: Build, tenant: Tenant) -> None:
    # RFC 9110 9.3.2: HEAD gets the header fields GET would, here the redirect to the login.
    engine = build()
    get = await call(engine, "GET", "/consent", query="returnTo=%2Fdashboard")
    head = await call(engine, "HEAD", "/consent", query="returnTo=%2Fdashboard")
    assert get.status_code == 302
    assert head.status_code == get.status_code
    assert head.headers.get("location", "").startswith(f"{DOMAIN}/authorize?")


async def test_accept_without_a_session_is_a_401_page(build: Build, tenant: Tenant) -> None:
    engine = build()
    form = {"csrf_token": "x", "version": "v2", "agree": "yes", "return_to": "/dash?deep=1"}
    response = await call(engine, "POST", "/consent", form=form)
    assert response.status_code == 401
    # Signing in again leads back to the deep link the terms page was to return to.
    back = f"{APP}/auth/login?returnTo=" + quote(f"{APP}/dash?deep=1", safe="")
    assert "Session expired" in response.text and html.escape(back) in response.text
    assert not tenant.patch.called and not tenant.token.called
    # Never anywhere else: a foreign return_to signs in to the home page.
    form["return_to"] = "https://evil.example/x"
    response = await call(engine, "POST", "/consent", form=form)
    assert "evil.example" not in response.text


@pytest.mark.parametrize(
    ("change", "origin"),
    [
        ({"csrf_token": ""}, APP),
        ({"csrf_token": "0" * 64}, APP),
        ({}, "https://evil.example"),
        ({}, None),
    ],
    ids=["missing token", "wrong token", "foreign origin", "no origin"],
)
async def test_accept_with_a_bad_csrf_check_changes_nothing(
    build: Build, tenant: Tenant, change: dict[str, str], origin: str | None
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies)
    form.update(change)
    if not form["csrf_token"]:
        del form["csrf_token"]
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form, origin=origin)
    assert response.status_code == 403
    # Only a form from this site, with a token, is told it is out of date.
    out_of_date = origin == APP and bool(form.get("csrf_token"))
    assert ("Page out of date" in response.text) is out_of_date
    assert ("Request refused" in response.text) is not out_of_date
    assert not tenant.patch.called and not tenant.token.called
    assert session_cookies(response) == []


async def test_another_sessions_token_is_refused(build: Build, tenant: Tenant) -> None:
    engine = build()
    theirs = await accept_form(engine, await cookies_for(engine, session()))
    theirs["return_to"] = "/deep/link?x=1"
    mine = await cookies_for(engine, session())
    response = await call(engine, "POST", "/consent", cookies=mine, form=theirs)
    # A form from an earlier sign-in (another tab): refused, with the way back to the page.
    assert response.status_code == 403 and "Page out of date" in response.text
    assert 'href="/consent?returnTo=' in response.text and "deep%2Flink" in response.text
    assert not tenant.patch.called


async def test_accept_of_terms_that_changed_meanwhile_is_a_409(
    build: Build, tenant: Tenant
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies, version="v1")
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 409 and "terms changed" in response.text
    assert hidden(response, "version") == "v2"  # the form again, for the current terms
    assert not tenant.patch.called and not tenant.token.called


@pytest.mark.parametrize("agree", ["", "no", "on"])
async def test_accept_without_the_box_ticked_is_a_400(
    build: Build, tenant: Tenant, agree: str
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies, agree=agree)
    if not agree:
        del form["agree"]
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 400 and "Tick the box" in response.text
    assert not tenant.patch.called


@pytest.mark.parametrize("status", [503, 400])
async def test_management_api_failing_is_a_503_that_says_what_is_known(
    build: Build, tenant: Tenant, status: int
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    tenant.patch_status = status
    form = await accept_form(engine, cookies)
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 503
    # A 4xx changed nothing; after a 5xx, Auth0 may still apply it: not known.
    said = "nothing was changed" if status == 400 else "could not confirm"
    assert said in response.text
    assert hidden(response, "csrf_token") == form["csrf_token"]  # the form, ready to retry
    assert hidden(response, "return_to") == f"{APP}/dashboard"
    # A 5xx is retried with back-off, a 4xx is not; neither ends in a grant or a new cookie.
    assert tenant.patch.call_count == (MAX_ATTEMPTS if status == 503 else 1)
    sleeps = engine.management.sleep
    assert isinstance(sleeps, Sleeps)
    assert len(sleeps.calls) == (MAX_ATTEMPTS - 1 if status == 503 else 0)
    assert tenant.refresh_grants() == 0 and session_cookies(response) == []
    assert tenant.user_metadata == {"consent": ACCEPTED}
    # Nothing saved, so nothing folded: the retry writes.
    tenant.patch_status = None
    retried = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert retried.status_code == 303
    assert tenant.user_metadata["consent"]["version"] == "v2"


@pytest.mark.parametrize(
    "redeployed",
    [
        {"terms_text": "We keep your data forever and sell it."},
        {
            "purposes": (
                ConsentPurpose("news", "Newsletter", "Share my e-mail with partners.", "1"),
            )
        },
    ],
)
async def test_a_text_changed_while_the_page_was_open_is_never_recorded(
    build: Build, tenant: Tenant, redeployed: dict[str, Any]
) -> None:
    # A deploy that changed the statement or a purpose's text but kept their versions:
    # the form the user read is not what would be recorded, so nothing is.
    shown = {
        "terms_text": "We keep your data for 30 days.",
        "purposes": (ConsentPurpose("news", "Newsletter", "Send me the newsletter.", "1"),),
    }
    before = build(**shown)
    cookies = await cookies_for(before, session())
    form = await accept_form(before, cookies, purpose_news="yes", offered="news")
    after = build(**{**shown, **redeployed})
    response = await call(after, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 409 and "changed while this page was open" in response.text
    assert not tenant.patch.called
    # The page it answers with shows the new text, ready to accept.
    assert hidden(response, "shown") != form["shown"]
    again = {**form, "shown": hidden(response, "shown")}
    assert (await call(after, "POST", "/consent", cookies=cookies, form=again)).status_code == 303


class GrantLockAway(LocalState):
    """A shared store that goes away between the saved choice and its grant."""

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        if key.startswith("grant:"):
            raise SharedStateError("the shared store did not answer")
        async with super().lock(key):
            yield


async def test_a_saved_choice_whose_refresh_meets_an_outage_says_it_is_saved(
    tenant: Tenant,
) -> None:
    settings = make_settings(mgmt_client_id="m2m", mgmt_client_secret="m2m-secret")
    engine = Engine.create(settings, shared_state=GrantLockAway())
    engine.management.sleep = Sleeps()
    try:
        cookies = await cookies_for(engine, session())
        form = await accept_form(engine, cookies)
        response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    finally:
        await engine.aclose()
    # Written, so never "unavailable" as if nothing happened: saved, and the session
    # catches up later.
    assert tenant.app_metadata["consent"]["version"] == "v2"
    assert response.status_code == 503 and "Your choice is saved" in response.text
    assert response.headers["retry-after"] == "5" and tenant.refresh_grants() == 0


async def test_a_template_of_the_apps_own_without_the_digest_still_records(
    build: Build, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    # Written before the field existed: a 409 it could never get past would lock everyone
    # out; the choice is recorded, and the log says what the record cannot prove.
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies)
    del form["shown"]
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 303 and tenant.patch.called
    assert "without the 'shown' field" in caplog.text


async def test_a_write_applied_whose_answer_was_lost_stands(
    build: Build, tenant: Tenant, tmp_path: Path
) -> None:
    # A gateway that timed out after Auth0 committed: the user is read back, the event is
    # in its history, so the choice stands (the grant follows) and the ledger confirms it.
    engine, url, cookies, form = await ledgered(build, tmp_path)
    tenant.lost_answer_status = 502
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 303 and tenant.refresh_grants() == 1
    assert tenant.app_metadata["consent"]["version"] == "v2"
    assert [entry.state for entry in await ledger_history(url)] == [EntryState.CONFIRMED]


async def test_a_write_whose_outcome_cannot_be_read_is_not_called_unchanged(
    build: Build, tenant: Tenant, tmp_path: Path
) -> None:
    engine, url, cookies, form = await ledgered(build, tmp_path)
    # A 5xx, and then the user cannot be read back: the page says so, the row waits.
    tenant.patch_status, tenant.read_back_status = 503, 503
    unknown = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    # A 5xx, read back without the event: Auth0 may still apply it, so the same.
    tenant.read_back_status = None
    absent = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    for page in (unknown, absent):
        assert page.status_code == 503 and "could not confirm" in page.text
        assert "nothing was changed" not in page.text
    # Refused (a 4xx): nothing was changed, and now the page may say so.
    tenant.patch_status = 400
    refused = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert refused.status_code == 503 and "nothing was changed" in refused.text
    states = [entry.state for entry in await ledger_history(url)]
    assert states == [EntryState.PENDING, EntryState.PENDING, EntryState.ABANDONED]
    assert tenant.refresh_grants() == 0 and tenant.app_metadata["consent"] == ACCEPTED


async def ledgered(
    build: Build, tmp_path: Path
) -> tuple[Engine, str, dict[str, str], dict[str, str]]:
    """An engine with a SQLite ledger, its URL, a session's cookies and its terms form."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = build(ledger_url=url, ledger_key=LEDGER_KEY)
    cookies = await cookies_for(engine, session())
    return engine, url, cookies, await accept_form(engine, cookies)


async def ledger_history(url: str) -> list[LedgerEntry]:
    ledger = await Ledger.open(url, LEDGER_KEY)
    try:
        return await ledger.history(SUB)
    finally:
        await ledger.close()


async def test_accept_writes_then_refreshes_then_goes_back(build: Build, tenant: Tenant) -> None:
    engine = build()
    before = session(consent={"given": True, "version": "v1"})
    cookies = await cookies_for(engine, before)
    form = await accept_form(engine, cookies)
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)

    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{APP}/dashboard"
    (body,) = tenant.patched()
    assert set(body) == {"user_metadata", "app_metadata"}
    stored = body["app_metadata"]["consent"]
    record = {k: v for k, v in stored.items() if k != "history"}
    assert body["user_metadata"]["consent"] == record
    assert record["given"] is True and record["version"] == "v2"
    # Read, append, write: the event joins what was stored.
    assert [e["action"] for e in stored["history"]] == ["given"]
    assert stored["history"][-1]["method"] == "terms_page"
    assert (
        record["text_sha256"]
        == hashlib.sha256(terms_statement(engine.settings).encode()).hexdigest()
    )
    assert DATE.fullmatch(record["date"])
    # The write, then the grant that brings the claim into the session.
    sent = [call.request for call in tenant.calls]
    read_at = next(i for i, r in enumerate(sent) if r.method == "GET" and "/api/" in r.url.path)
    patched_at = next(i for i, r in enumerate(sent) if r.method == "PATCH")
    assert read_at < patched_at
    granted_at = next(i for i, r in enumerate(sent) if b"grant_type=refresh_token" in r.content)
    assert patched_at < granted_at
    assert tenant.refresh_grants() == 1
    new = await engine.sessions.load(jar([c.encode() for c in session_cookies(response)]))
    assert new is not None and new.sid == before.sid
    assert new.user[CLAIM] == record and new.token_set.access_token == "at-2"
    # The user's other sessions (older claims) are now re-checked on their next request.
    assert engine.revocations.status(before, time.time()) is Revocation.STALE
    assert engine.revocations.status(new, time.time()) is Revocation.NONE


async def test_a_terms_path_is_the_apps_below_its_prefix_wherever_shown_or_recorded(
    build: Build, tenant: Tenant
) -> None:
    # CONSENT_TERMS_URL=/terms under APP_BASE_URL=.../app names /app/terms, as
    # CONSENT_PUBLIC_PATHS=/terms does; a record or receipt names it whole.
    engine = build(app_base_url=f"{APP}/app", terms_url="/terms")
    terms = f"{APP}/app/terms"
    cookies = await cookies_for(engine, session(consent={"given": True, "version": "v1"}))
    page = await call(engine, "GET", "/consent", cookies=cookies, root_path="/app")
    assert 'href="/app/terms"' in page.text and 'href="/terms"' not in page.text
    assert f"of the terms published at {terms}." in page.text
    form = await accept_form(engine, cookies)
    assert (await call(engine, "POST", "/consent", cookies=cookies, form=form)).status_code == 303
    (body,) = tenant.patched()
    assert body["user_metadata"]["consent"]["text_details"] == terms
    assert body["app_metadata"]["consent"]["history"][-1]["text_details"] == terms
    consented = await cookies_for(engine, session(consent=ACCEPTED))
    for shown in ("/consent/withdraw", "/consent/history"):
        linked = await call(engine, "GET", shown, cookies=consented, root_path="/app")
        assert linked.status_code == 200 and 'href="/app/terms"' in linked.text, shown
    receipt = await call(engine, "GET", "/consent/receipt.json", cookies=consented)
    assert receipt.json()["policy_url"] == terms


async def test_the_same_accept_again_is_folded_into_the_first(build: Build, tenant: Tenant) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies)
    first = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert first.status_code == 303
    again = jar([c.encode() for c in session_cookies(first)])
    second = await call(engine, "POST", "/consent", cookies=again, form=form)
    assert second.status_code == 303 and second.headers["location"] == f"{APP}/dashboard"
    assert tenant.patch.call_count == 1


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "javascript:x"])
async def test_a_foreign_return_address_in_the_form_goes_home(
    build: Build, tenant: Tenant, target: str
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies, return_to=target)
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 303 and response.headers["location"] == f"{APP}/"
    assert tenant.patch.call_count == 1


async def test_accepts_beyond_the_limit_are_a_429(build: Build, tenant: Tenant) -> None:
    engine = build(accepts_per_minute=1)
    cookies = await cookies_for(engine, session())
    form = await accept_form(engine, cookies)
    assert (await call(engine, "POST", "/consent", cookies=cookies, form=form)).status_code == 303
    response = await call(engine, "POST", "/consent", cookies=cookies, form=form)
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert tenant.patch.call_count == 1


# ---------------------------------------------------------------------------------------------
# Withdrawal


async def test_withdraw_page_needs_a_session(build: Build, tenant: Tenant) -> None:
    engine = build()
    page = await call(engine, "GET", "/consent/withdraw")
    assert page.status_code == 302
    assert page.headers["location"].startswith(f"{DOMAIN}/authorize?")
    refused = await call(engine, "POST", "/consent/withdraw", form={"csrf_token": "x"})
    assert refused.status_code == 401 and not tenant.patch.called


async def test_signing_in_again_after_the_withdraw_form_expired_comes_back_to_it(
    build: Build, tenant: Tenant
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    page = await call(engine, "GET", "/consent/withdraw", cookies=cookies)
    form = {"csrf_token": hidden(page, "csrf_token"), "return_to": hidden(page, "return_to")}
    # The session ended (signed out in another tab) before the form was sent.
    response = await call(engine, "POST", "/consent/withdraw", form=form)
    assert response.status_code == 401 and "Session expired" in response.text
    back = f"{APP}/auth/login?returnTo=" + quote(f"{APP}/consent/withdraw", safe="")
    assert html.escape(back) in response.text
    assert not tenant.patch.called


async def test_withdraw_with_a_bad_csrf_token_changes_nothing(build: Build, tenant: Tenant) -> None:
    engine = build(withdraw_mode="delete")
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    response = await call(
        engine, "POST", "/consent/withdraw", cookies=cookies, form={"csrf_token": "0" * 64}
    )
    assert response.status_code == 403 and "Page out of date" in response.text
    assert 'href="/consent/withdraw"' in response.text
    assert not tenant.patch.called and not tenant.delete.called


@pytest.mark.parametrize("path_holds_root", [True, False], ids=["in-path", "beside-path"])
async def test_an_out_of_date_form_below_a_prefix_leads_back_below_it(
    build: Build, tenant: Tenant, path_holds_root: bool
) -> None:
    engine = build(app_base_url=f"{APP}/app")
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    response = await call(
        engine,
        "POST",
        "/consent/withdraw",
        cookies=cookies,
        form={"csrf_token": "0" * 64},
        root_path="/app",
        path_holds_root=path_holds_root,
    )
    assert response.status_code == 403 and 'href="/app/consent/withdraw"' in response.text


async def test_withdraw_in_revoke_mode(build: Build, tenant: Tenant) -> None:
    engine = build(withdraw_mode="revoke")
    before = session(consent=ACCEPTED)
    cookies = await cookies_for(engine, before)
    form = await withdraw_form(engine, cookies)
    response = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)

    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{APP}/consent?returnTo=%2F"
    (body,) = tenant.patched()
    record = body["user_metadata"]["consent"]
    assert body["app_metadata"]["consent"]["history"][-1]["action"] == "withdrawn"
    assert record["given"] is False and record["withdrawn"] is True
    assert record["version"] == "v2" and DATE.fullmatch(record["date"])
    assert not tenant.delete.called and tenant.refresh_grants() == 1
    # The session goes on, with a claim that no longer lets it past the gate.
    new = await engine.sessions.load(jar([c.encode() for c in session_cookies(response)]))
    assert new is not None and new.sid == before.sid and new.user[CLAIM] == record


async def test_the_withdraw_page_says_what_was_accepted_and_withdraws_no_consent_never_given(
    build: Build, tenant: Tenant
) -> None:
    # The version this user accepted, not the one the site asks for now.
    engine = build(terms_version="v3")
    older = await cookies_for(engine, session(consent={**ACCEPTED, "version": "v2"}))
    page = await call(engine, "GET", "/consent/withdraw", cookies=older)
    assert "accepted version v2 of the" in page.text and "v3" not in page.text
    # A user who never accepted: no claim that they did, and no "withdrawn" event for a
    # consent that never was, by the session's claim nor by the record.
    tenant.user_metadata = tenant.app_metadata = {}
    never = await cookies_for(engine, session(consent=None))
    page = await call(engine, "GET", "/consent/withdraw", cookies=never)
    assert "accepted version" not in page.text and "there may be nothing to withdraw" in page.text
    form = await withdraw_form(engine, never)
    response = await call(engine, "POST", "/consent/withdraw", cookies=never, form=form)
    assert response.status_code == 303
    assert response.headers["location"] == f"{APP}/consent?returnTo=%2F"
    assert tenant.get.called and not tenant.patch.called
    # The session's claim may be older than a choice made elsewhere: the record decides.
    tenant.app_metadata = {"consent": ACCEPTED}
    response = await call(engine, "POST", "/consent/withdraw", cookies=never, form=form)
    assert response.status_code == 303 and tenant.patch.call_count == 1


async def test_a_record_that_cannot_be_read_says_so_and_is_logged(
    build: Build, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    engine = build()
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    tenant.get.mock(return_value=httpx.Response(500))
    page = await call(engine, "GET", "/consent/history", cookies=cookies)
    assert page.status_code == 503 and "consent record cannot be read" in page.text
    assert page.headers["retry-after"] == "5"
    receipt = await call(engine, "GET", "/consent/receipt.json", cookies=cookies)
    assert receipt.json() == {"error": "temporarily_unavailable"}
    assert "reading the consent record failed" in caplog.text


async def test_withdraw_in_flag_mode_closes_the_account_and_the_session(
    build: Build, tenant: Tenant
) -> None:
    engine = build(withdraw_mode="flag")
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    form = await withdraw_form(engine, cookies)
    response = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)

    assert response.status_code == 303, response.text
    (body,) = tenant.patched()
    assert body["app_metadata"]["deleted"] is True
    consent = body["user_metadata"]["consent"]
    assert body["app_metadata"]["consent"]["withdrawn"] is True
    assert consent["given"] is False and consent["withdrawn"] is True
    assert not tenant.delete.called and tenant.refresh_grants() == 0
    assert_signed_out(response)


async def test_withdraw_in_delete_mode_deletes_after_recording(
    build: Build, tenant: Tenant
) -> None:
    engine = build(withdraw_mode="delete")
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    form = await withdraw_form(engine, cookies)
    response = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)

    assert response.status_code == 303, response.text
    methods = [c.request.method for c in tenant.calls if c.request.url.path.startswith("/api")]
    assert methods == ["GET", "PATCH", "DELETE"]
    (body,) = tenant.patched()
    assert body["user_metadata"]["consent"]["withdrawn"]
    assert body["app_metadata"]["consent"]["history"][-1]["action"] == "withdrawn"
    assert tenant.deleted
    assert_signed_out(response)


async def test_withdraw_in_delete_mode_goes_on_when_the_user_is_already_gone(
    build: Build, tenant: Tenant
) -> None:
    # An earlier attempt deleted the user, but its answer was lost: the PATCH is a 404 now.
    engine = build(withdraw_mode="delete")
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    form = await withdraw_form(engine, cookies)
    tenant.patch_status = tenant.delete_status = 404
    tenant.patch_error_code = "inexistent_user"
    response = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)

    # Its DELETE is a 404 too: the withdrawal is done, and ends as one that just happened.
    assert response.status_code == 303, response.text
    assert tenant.patch.call_count == 1 and tenant.delete.call_count == 1
    assert_signed_out(response)


@pytest.mark.parametrize(
    ("path", "mode"), [("/consent", "revoke"), ("/consent/withdraw", "revoke"),
                       ("/consent/withdraw", "flag"), ("/consent/purposes", "revoke")],
)  # fmt: skip
async def test_a_user_the_provider_no_longer_has_is_signed_out_not_asked_to_retry(
    build: Build, tenant: Tenant, path: str, mode: str
) -> None:
    # Deleted in the dashboard, say: every retry would get the same 404.
    news = ConsentPurpose("news", "Newsletter", "Send me the newsletter.", "1")
    engine = build(withdraw_mode=mode, purposes=(news,))
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    form = {**(await withdraw_form(engine, cookies)), "version": "v2", "agree": "yes",
            "purpose": "news", "action": "give", "return_to": "/dash?deep=1"}  # fmt: skip
    # A 404 that says nothing of the user (a wrong API address, a gateway): retry later.
    tenant.patch_status, tenant.patch_error_code = 404, None
    response = await call(engine, "POST", path, cookies=cookies, form=form)
    assert response.status_code == 503 and not session_cookies(response)
    tenant.patch_error_code = "inexistent_user"  # Auth0's own word that the user is gone
    response = await call(engine, "POST", path, cookies=cookies, form=form)
    assert response.status_code == 401 and "Account not found" in response.text
    # Signing in again leads where the form was going (a withdrawal's account is gone:
    # nothing of it to come back to).
    login = f"{APP}/auth/login"
    back = f"{login}?returnTo=" + quote(f"{APP}/dash?deep=1", safe="")
    assert f'href="{html.escape(login if path == "/consent/withdraw" else back)}"' in response.text
    cleared = session_cookies(response)
    assert cleared and all("Max-Age=0" in c for c in cleared)
    # Reading the record, too: the same 404 signs the user out.
    gone = {"message": "The user does not exist.", "errorCode": "inexistent_user"}
    tenant.get.mock(return_value=httpx.Response(404, json=gone))
    history = await call(engine, "GET", "/consent/history", cookies=cookies)
    assert history.status_code == 401 and "Account not found" in history.text
    back = f"{login}?returnTo=" + quote(f"{APP}/consent/history", safe="")
    assert f'href="{html.escape(back)}"' in history.text
    receipt = await call(engine, "GET", "/consent/receipt.json", cookies=cookies)
    assert receipt.status_code == 401 and receipt.json()["error"] == "login_required"


@pytest.mark.parametrize(
    ("mode", "fail"),
    [("revoke", "patch"), ("flag", "patch"), ("delete", "patch"), ("delete", "delete")],
)
async def test_withdraw_page_again_when_the_management_api_fails(
    build: Build, tenant: Tenant, mode: str, fail: str
) -> None:
    engine = build(withdraw_mode=mode)
    cookies = await cookies_for(engine, session(consent=ACCEPTED))
    form = await withdraw_form(engine, cookies)
    if fail == "patch":
        tenant.patch_status = 503
    else:
        tenant.delete_status = 503
    response = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)

    assert response.status_code == 503
    assert "could not complete your withdrawal" in response.text
    assert hidden(response, "csrf_token") == form["csrf_token"]  # the form, ready to retry
    assert session_cookies(response) == [] and tenant.refresh_grants() == 0
    assert not tenant.deleted
    # Nothing recorded as done, so a retry does the whole withdrawal.
    tenant.patch_status = tenant.delete_status = None
    retried = await call(engine, "POST", "/consent/withdraw", cookies=cookies, form=form)
    assert retried.status_code == 303
    assert tenant.user_metadata["consent"]["withdrawn"] is True
    assert tenant.deleted is (mode == "delete")


def assert_signed_out(response: httpx.Response) -> None:
    """Sent through the provider's logout back home, every session cookie deleted."""
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{DOMAIN}/v2/logout"
    assert parse_qs(location.query) == {"client_id": ["client-1"], "returnTo": [f"{APP}/"]}
    cleared = session_cookies(response)
    assert cleared and all("Max-Age=0" in c for c in cleared)
