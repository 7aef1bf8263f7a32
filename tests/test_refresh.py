"""Each branch of the silent claim refresh, one HTTP exchange at a time (respx), with ID tokens
really signed and really verified."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from starlette.requests import Request

from consent_middleware import RefreshError, Session, TokenSet, refresh_session
from consent_middleware._admission_cache import Admitted
from consent_middleware._admissions import Admissions
from consent_middleware._engine import Engine
from consent_middleware._refresh import (
    REFRESHED_SCOPE_KEY,
    REFRESHER_SCOPE_KEY,
    SESSION_SCOPE_KEY,
    gated_session,
)
from consent_middleware._transactions import Expectation
from tests.conftest import CLAIM, DOMAIN, ISSUER, idp
from tests.keys import SigningKey, id_token_claims

TOKEN_URL = f"{DOMAIN}/oauth/token"
ACCEPTED = {"given": True, "version": "v2", "date": "2026-11-23T00:00:00.000Z"}

pytestmark = pytest.mark.anyio


def tokens(key: SigningKey, consent: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    claims = id_token_claims(ISSUER, "client-1", nonce=None)
    if consent is not None:
        claims[CLAIM] = consent
    return {
        "id_token": key.sign(claims),
        "access_token": "at-2",
        "expires_in": 3600,
        "token_type": "Bearer",
        **extra,
    }


def session(refresh_token: str | None = "rt-1", consent: dict[str, Any] | None = None) -> Session:
    claims: dict[str, Any] = {"sub": "auth0|user1", "email": "user@example.com"}
    if consent is not None:
        claims[CLAIM] = consent
    return Session.from_claims(
        claims,
        TokenSet(
            access_token="at-1",
            id_token="old.id.token",
            refresh_token=refresh_token,
            expires_at=int(time.time()) + 3600,
            scope="openid offline_access",
        ),
    )


def request(scope_extra: dict[str, Any] | None = None) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/consent",
        "headers": [],
        "query_string": b"",
        **(scope_extra or {}),
    }
    return Request(scope)


def set_cookies(response: Any) -> list[str]:
    return [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]


async def test_refresh_token_grant_then_straight_back(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL).respond(json=tokens(signing_key, ACCEPTED))
        response = await subject.refresh_and_continue(
            request(), session(), "/dashboard?x=1", Expectation.CONSENT
        )
    assert response.status_code == 303 and response.headers["location"] == "/dashboard?x=1"
    form = parse_qs(grant.calls.last.request.content.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["rt-1"]
    assert any(c.startswith("__session=") for c in set_cookies(response))


async def test_a_rotated_refresh_token_is_kept(signing_key: SigningKey, engine: Engine) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=tokens(signing_key, ACCEPTED, refresh_token="rt-2"))
        refreshed = await subject.refresh(session())
    assert refreshed.token_set.refresh_token == "rt-2"
    assert refreshed.user[CLAIM] == ACCEPTED and refreshed.token_set.access_token == "at-2"


async def test_failed_grant_falls_back_to_prompt_none(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(400, json={"error": "invalid_grant"})
        response = await subject.refresh_and_continue(
            request(), session(), "/dashboard", Expectation.CONSENT
        )
    assert response.status_code in (302, 303, 307)
    location = urlsplit(response.headers["location"])
    assert location.path == "/authorize"
    query = parse_qs(location.query)
    assert query["prompt"] == ["none"] and query["code_challenge_method"] == ["S256"]
    assert any(c.startswith("__Host-txn_") for c in set_cookies(response))


async def test_no_refresh_token_goes_straight_to_prompt_none(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL)
        response = await subject.refresh_and_continue(
            request(), session(refresh_token=None), "/dashboard", Expectation.CONSENT
        )
    assert not grant.called
    assert parse_qs(urlsplit(response.headers["location"]).query)["prompt"] == ["none"]


async def test_unreachable_token_endpoint_falls_back_too(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).mock(side_effect=httpx.ConnectTimeout("slow"))
        response = await subject.refresh_and_continue(
            request(), session(), "/dashboard", Expectation.CONSENT
        )
    assert parse_qs(urlsplit(response.headers["location"]).query)["prompt"] == ["none"]


async def test_claim_still_missing_stops_with_an_explanation(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=tokens(signing_key, None))
        response = await subject.refresh_and_continue(
            request(), session(), "/dashboard", Expectation.CONSENT
        )
    assert response.status_code == 502
    assert b"post-login Action" in response.body and b"location" not in response.body


async def test_withdrawal_the_token_does_not_show_ends_the_session(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=tokens(signing_key, ACCEPTED))
        response = await subject.refresh_and_continue(
            request({"headers": [(b"cookie", b"__session=the-old-one")]}),
            session(consent=ACCEPTED),
            "/consent",
            Expectation.WITHDRAWAL,
        )
    assert response.status_code == 502
    cleared = [c for c in set_cookies(response) if c.startswith("__session=")]
    assert cleared and all("Max-Age=0" in c for c in cleared)


async def test_a_token_for_another_user_is_refused(signing_key: SigningKey, engine: Engine) -> None:
    subject = engine.refresher
    other = id_token_claims(ISSUER, "client-1", nonce=None, sub="auth0|someone-else")
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(
            json={"id_token": signing_key.sign(other), "access_token": "x", "expires_in": 60}
        )
        with pytest.raises(RefreshError):
            await subject.refresh(session())


async def test_concurrent_refreshes_of_one_session_are_one_grant_at_a_time(
    signing_key: SigningKey, engine: Engine
) -> None:
    subject = engine.refresher
    inside = 0
    most = 0

    async def slow_grant(req: httpx.Request) -> httpx.Response:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        return httpx.Response(200, json=tokens(signing_key, ACCEPTED))

    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL).mock(side_effect=slow_grant)
        one = session()
        results = await asyncio.gather(*(subject.refresh(one) for _ in range(5)))
    assert most == 1 and all(r.user[CLAIM] == ACCEPTED for r in results)
    assert grant.call_count == 1  # the four that queued took the first grant's result


async def test_refresh_session_for_apps(signing_key: SigningKey, engine: Engine) -> None:
    subject = engine.refresher
    current = session()
    req = request({REFRESHER_SCOPE_KEY: subject, SESSION_SCOPE_KEY: current})
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=tokens(signing_key, ACCEPTED))
        refreshed = await refresh_session(req)
    assert refreshed.user[CLAIM] == ACCEPTED
    assert req.scope[REFRESHED_SCOPE_KEY] is refreshed
    with pytest.raises(RefreshError):
        await refresh_session(request())  # not behind the gate


async def test_the_session_is_parsed_from_the_cookie_when_the_gate_read_a_summary(
    signing_key: SigningKey, engine: Engine
) -> None:
    # A request the gate answered from its cache or its summary carries no Session: the
    # app's call parses it, once, from the request's own cookie.
    subject = engine.refresher
    current = session(consent=ACCEPTED)
    cookie = (await engine.sessions.save(current, {}))[0].split(b";")[0]
    req = request({REFRESHER_SCOPE_KEY: subject, "headers": [(b"cookie", cookie)]})
    admissions = Admissions(engine.settings, engine.sessions, subject)
    now = time.time()
    admitted = await admissions.admitted(req.scope, cookie, cookie, now)
    assert isinstance(admitted, Admitted) and admitted.session is None  # a summary only
    admissions.hand_over(admitted, req.scope, cookie, cookie, now)
    gated = await gated_session(req.scope)
    assert gated is not None and gated[1].token_set == current.token_set
    assert req.scope[SESSION_SCOPE_KEY] is gated[1]
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=tokens(signing_key, ACCEPTED))
        refreshed = await refresh_session(req)
    assert refreshed.user[CLAIM] == ACCEPTED
    # Its cookie gone (ended while the request ran): no session, and refresh says why.
    gone = request({REFRESHER_SCOPE_KEY: subject})
    assert await gated_session(gone.scope) is None
    with pytest.raises(RefreshError):
        await refresh_session(gone)
