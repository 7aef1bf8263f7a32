"""get_access_token() and /auth/access-token: the token as it is while it is good, renewed
by the refresh-token grant when it runs out (respx for the one HTTP exchange; ID tokens
really signed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.testclient import TestClient

from consent_middleware import (
    AccessTokenError,
    AccessTokenErrorCode,
    ConsentMiddleware,
    RefreshError,
    Session,
    TokenSet,
    get_access_token,
    refresh_session,
)
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, DOMAIN, ISSUER, idp, make_settings
from tests.keys import SigningKey, id_token_claims
from tests.test_session import jar

SETTINGS = make_settings()
CONSENTED = {CLAIM: {"given": True, "version": "v2"}}
TOKEN_URL = f"{DOMAIN}/oauth/token"


def cookies(
    expires_in: int,
    refresh_token: str | None = "rt-1",
    claims: dict[str, Any] | None = None,
    lifetime: int = 3600,
) -> dict[str, str]:
    session = _session(expires_in, refresh_token, claims, lifetime)
    return jar(asyncio.run(CookieSessionStore(SETTINGS).save(session, {})))


def _session(
    expires_in: int,
    refresh_token: str | None = "rt-1",
    claims: dict[str, Any] | None = None,
    lifetime: int = 3600,
) -> Session:
    """A session whose access token was issued for ``lifetime`` seconds and has
    ``expires_in`` of them left."""
    now = time.time()
    got = now + expires_in - lifetime
    return Session.from_claims(
        {"sub": "auth0|user1", **(CONSENTED if claims is None else claims)},
        TokenSet("at-1", "idt", refresh_token, int(now) + expires_in, "openid", int(got)),
        issued_at=int(got * 1000),
    )


def grant_answer(key: SigningKey, token: str = "at-2", expires_in: int = 3600) -> dict[str, Any]:
    claims = id_token_claims(ISSUER, "client-1", nonce=None, **CONSENTED)
    return {"access_token": token, "id_token": key.sign(claims), "expires_in": expires_in,
            "scope": "openid offline_access", "refresh_token": "rt-2"}  # fmt: skip


async def call_api(request: Request) -> Response:
    refresh = request.query_params.get("refresh") == "1"
    token = await get_access_token(request, refresh=refresh, min_ttl=60)
    return JSONResponse({"token": token.token, "expires_at": token.expires_at})


def client(jar_: dict[str, str]) -> TestClient:
    app = Starlette(routes=[Route("/api/call", call_api)])
    app.add_middleware(ConsentMiddleware, settings=SETTINGS)
    test = TestClient(app, base_url="https://app.example.com", follow_redirects=False)
    test.cookies.update(jar_)
    return test


def test_a_valid_token_costs_no_io(signing_key: SigningKey) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL)
        response = client(cookies(3600)).get("/api/call")
    assert response.json()["token"] == "at-1" and not grant.called
    assert "set-cookie" not in response.headers


def test_an_expiring_token_is_renewed_and_the_session_written(signing_key: SigningKey) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL).respond(json=grant_answer(signing_key))
        with client(cookies(30)) as test:
            response = test.get("/api/call")
            assert response.json()["token"] == "at-2" and grant.call_count == 1
            assert "__session=" in response.headers["set-cookie"]
            # The renewed session is what the browser holds now: no second grant.
            assert test.get("/api/call").json()["token"] == "at-2"
            assert grant.call_count == 1
            assert test.get("/api/call", params={"refresh": "1"}).status_code == 200
            assert grant.call_count == 2


def test_tokens_shorter_lived_than_min_ttl_are_used_for_half_their_life(
    signing_key: SigningKey,
) -> None:
    # The provider issues 30 s tokens; callers ask for 60 s. No token can ever have that
    # long left, so renewing on every call would be a grant per request: each token is
    # renewed once half its life has gone instead.
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        answer = grant_answer(signing_key, expires_in=30)
        grant = mock.post(TOKEN_URL).respond(json=answer)
        with client(cookies(25, lifetime=30)) as test:
            assert test.get("/api/call").json()["token"] == "at-1"
            assert not grant.called
        with client(cookies(10, lifetime=30)) as test:
            assert test.get("/api/call").json()["token"] == "at-2"
            for _ in range(5):
                assert test.get("/api/call").json()["token"] == "at-2"
            assert grant.call_count == 1


def test_a_tokens_life_is_its_own_not_the_sessions_last_grant() -> None:
    # A grant for another API moves the session's issued_at, never its own token's age:
    # an hour-old token with 20 s left is no good for 60 s, however fresh the session.
    from consent_middleware._access import usable
    from consent_middleware._audiences import AudienceToken

    now = time.time()
    tokens = TokenSet("at", "idt", "rt", int(now) + 20, "openid", int(now) - 3580)
    session = Session.from_claims({"sub": "u"}, tokens, issued_at=int(now * 1000))
    assert not usable(session, 60, now)
    # Kept in the cookie, and read back (nextjs-auth0 leaves it be; without it, min_ttl).
    payload = session.to_payload()
    assert payload["tokenSet"]["issuedAt"] == int(now) - 3580
    parsed = Session.from_payload({**payload, "exp": int(now) + 600})
    assert parsed is not None and parsed.token_set.issued_at == int(now) - 3580
    unknown = {**payload["tokenSet"], "issuedAt": "yesterday"}
    parsed = Session.from_payload({**payload, "tokenSet": unknown, "exp": int(now) + 600})
    assert parsed is not None and parsed.token_set.issued_at == 0
    assert not usable(parsed, 60, now)
    # A short-lived token of another API: half its life, by its own issue time.
    entry = {"accessToken": "x", "audience": "https://api", "expiresAt": int(now) + 20}
    fresh = AudienceToken.from_entry({**entry, "issuedAt": int(now) - 10})
    old = AudienceToken.from_entry({**entry, "issuedAt": int(now) - 3580})
    assert (
        fresh is not None
        and fresh.usable(60, now)
        and fresh.to_entry() == {**entry, "issuedAt": int(now) - 10}
    )
    assert old is not None and not old.usable(60, now)
    written_elsewhere = AudienceToken.from_entry(entry)
    assert written_elsewhere is not None and not written_elsewhere.usable(60, now)


async def streamed_token(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"token: "
        # After the start, as a streaming body or a background task asks.
        if request.query_params.get("refresh_session"):
            await refresh_session(request)
        token = await get_access_token(request, min_ttl=60)
        yield token.token.encode()

    return StreamingResponse(body())


@pytest.mark.parametrize(("expires_in", "renewed"), [(3600, False), (30, True)])
def test_a_token_asked_for_after_the_response_started_is_never_renewed(
    signing_key: SigningKey, expires_in: int, renewed: bool
) -> None:
    # A grant now would rotate the refresh token into a session no cookie can carry any
    # more: the cookie would keep the spent token, dead once the grant's record expires.
    app = Starlette(routes=[Route("/stream", streamed_token)])
    app.add_middleware(ConsentMiddleware, settings=SETTINGS)
    test = TestClient(app, base_url="https://app.example.com")
    test.cookies.update(cookies(expires_in))
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL).respond(json=grant_answer(signing_key))
        if not renewed:
            assert test.get("/stream").text == "token: at-1"
        else:
            with pytest.raises(AccessTokenError) as raised:
                test.get("/stream")
            assert raised.value.code == AccessTokenErrorCode.RESPONSE_STARTED.value
        with pytest.raises(RefreshError, match="the response has started"):
            test.get("/stream", params={"refresh_session": "1"})
    assert not grant.called


def test_no_refresh_token_or_a_refused_one_is_a_login_and_an_outage_a_503(
    signing_key: SigningKey,
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        api = {"accept": "application/json"}
        missing = client(cookies(0, refresh_token=None)).get("/api/call", headers=api)
        assert missing.status_code == 401 and missing.json()["error"] == "login_required"
        mock.post(TOKEN_URL).respond(400, json={"error": "invalid_grant"})
        refused = client(cookies(0, refresh_token="rt-x")).get("/api/call")
        assert refused.status_code == 307 and "/auth/login" in refused.headers["location"]
        mock.post(TOKEN_URL).respond(503)
        down = client(cookies(0, refresh_token="rt-y")).get("/api/call", headers=api)
        assert down.status_code == 503 and down.json()["error"] == "temporarily_unavailable"


def test_a_token_that_cannot_be_renewed_right_after_a_login_is_no_new_login(
    signing_key: SigningKey,
) -> None:
    # No offline_access, so no refresh token: the login the middleware answers with would
    # end the same way, silently at the provider, and the browser would go round until it
    # gave up. Right after a login, a page that says so.
    api = {"accept": "application/json"}
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(400, json={"error": "invalid_grant"})
        fresh = client(cookies(3600, refresh_token=None, lifetime=3600))
        page = fresh.get("/api/call", params={"refresh": "1"})
        assert page.status_code == 502 and "Signing in again would not help" in page.text
        answer = fresh.get("/api/call", params={"refresh": "1"}, headers=api)
        assert answer.status_code == 502 and answer.json()["error"] == "missing_refresh_token"
        # A refresh token refused (revoked since the login, say): a login brings a new one.
        refused = client(cookies(3600, refresh_token="rt-x", lifetime=3600))
        again = refused.get("/api/call", params={"refresh": "1"})
        assert again.status_code == 307 and "/auth/login" in again.headers["location"]
        # Browser code asking for a token for another API (a grant with the refresh token,
        # whatever the session's own token's age) gets the same, not a 401 to log in on.
        just_signed_in = client(cookies(3600, refresh_token=None, lifetime=3600))
        route = just_signed_in.get(
            "/auth/access-token", params={"audience": "https://reports.example.com"}
        )
        assert route.status_code == 502 and route.json()["error"] == "missing_refresh_token"
        # A session signed in a while ago: a login may well bring a refresh token.
        older = client(cookies(0, refresh_token=None)).get("/api/call")
        assert older.status_code == 307 and "/auth/login" in older.headers["location"]
        # A 100 s token 55 s after the login needs renewing for its age: a login brings a
        # new one, good for as long again.
        aged = client(cookies(45, refresh_token=None, lifetime=100)).get("/api/call")
        assert aged.status_code == 307 and "/auth/login" in aged.headers["location"]


@pytest.mark.anyio
async def test_twenty_concurrent_callers_make_one_grant(signing_key: SigningKey) -> None:
    calls = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=grant_answer(signing_key))

    app = Starlette(routes=[Route("/api/call", call_api)])
    gate = ConsentMiddleware(app, settings=SETTINGS)
    header = "; ".join(f"{k}={v}" for k, v in (await _cookies_async(30)).items())
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).mock(side_effect=slow)
        mock.route(host="app.example.com").pass_through()
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="https://app.example.com") as c:
            answers = await asyncio.gather(
                *(c.get("/api/call", headers={"cookie": header}) for _ in range(20))
            )
    assert [a.json()["token"] for a in answers] == ["at-2"] * 20
    assert calls == 1
    await gate.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (httpx.Response(400, json={"error": "invalid_grant"}), 401, "login_required"),
        (httpx.Response(503), 503, "temporarily_unavailable"),
    ],
)
async def test_callers_that_waited_on_a_failed_grant_get_its_answer(
    signing_key: SigningKey, answer: httpx.Response, status: int, error: str
) -> None:
    # A dead refresh token is a login for all twenty, not one login and nineteen outages;
    # an outage is an outage for all of them.
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return answer

    # Inside Starlette's error middleware, as add_middleware puts it: the route's error
    # reaches the gate before any 500 starts.
    gate = ConsentMiddleware(Router([Route("/api/call", call_api)]), settings=SETTINGS)
    header = "; ".join(f"{k}={v}" for k, v in (await _cookies_async(30)).items())
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        grant = mock.post(TOKEN_URL).mock(side_effect=slow)
        mock.route(host="app.example.com").pass_through()
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="https://app.example.com") as c:
            answers = await asyncio.gather(
                *(
                    c.get("/api/call", headers={"cookie": header, "accept": "application/json"})
                    for _ in range(20)
                )
            )
    assert [(a.status_code, a.json()["error"]) for a in answers] == [(status, error)] * 20
    assert grant.call_count < 20  # most took the grant they waited on
    await gate.aclose()


async def _cookies_async(expires_in: int) -> dict[str, str]:
    return jar(await CookieSessionStore(SETTINGS).save(_session(expires_in), {}))


def test_the_browser_route(signing_key: SigningKey) -> None:
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        mock.post(TOKEN_URL).respond(json=grant_answer(signing_key))
        assert client({}).get("/auth/access-token").status_code == 401
        test = client(cookies(3600))
        answer = test.get("/auth/access-token", headers={"sec-fetch-site": "same-origin"})
        assert answer.status_code == 200 and answer.json()["token"] == "at-1"
        assert answer.headers["cache-control"] == "no-store"
        foreign = test.get("/auth/access-token", headers={"origin": "https://evil.example"})
        assert foreign.status_code == 403
        cross = test.get("/auth/access-token", headers={"sec-fetch-site": "cross-site"})
        assert cross.status_code == 403
        renewed = client(cookies(30)).get("/auth/access-token")
        assert renewed.json()["token"] == "at-2" and "__session=" in renewed.headers["set-cookie"]
        # No consent, no token for the APIs.
        unconsented = client(cookies(3600, claims={CLAIM: {"given": False}}))
        refused = unconsented.get("/auth/access-token")
        assert refused.status_code == 403 and refused.json()["error"] == "consent_required"


def test_outside_the_gate_there_is_no_token() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(AccessTokenError) as info:
        asyncio.run(get_access_token(request))
    assert info.value.code == AccessTokenErrorCode.MISSING_SESSION.value
    # The member itself compares equal, as nextjs-auth0's err.code === AccessTokenErrorCode.X.
    code = info.value.code
    assert code == AccessTokenErrorCode.MISSING_SESSION
    assert code in (AccessTokenErrorCode.MISSING_SESSION, AccessTokenErrorCode.PROVIDER_UNAVAILABLE)


def test_the_session_a_route_parsed_is_kept_for_the_next_request(
    signing_key: SigningKey, decrypts: list[object]
) -> None:
    # The gate admits on a summary; the route's get_access_token() parses the whole session
    # once, and the admission keeps it: the next calls decrypt nothing.
    test = client(cookies(3600))
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        tokens = [test.get("/api/call").json()["token"] for _ in range(5)]
    assert tokens == ["at-1"] * 5
    assert len(decrypts) == 2  # the gate's summary, then the route's session: once each


def test_a_route_never_gets_a_session_other_than_the_one_admitted() -> None:
    # An app (or a middleware inside it) that swaps the Cookie header after the gate gets
    # no session at all, not the other user's.
    other = cookies(3600, claims={"sub": "auth0|someone-else", **CONSENTED})
    swapped = "; ".join(f"{k}={v}" for k, v in other.items()).encode()

    async def swap(request: Request) -> Response:
        request.scope["headers"] = [(b"cookie", swapped)]
        try:
            await get_access_token(request)
        except AccessTokenError as exc:
            return JSONResponse({"error": exc.code})
        return JSONResponse({"error": None})

    app = Starlette(routes=[Route("/api/swap", swap)])
    app.add_middleware(ConsentMiddleware, settings=SETTINGS)
    test = TestClient(app, base_url="https://app.example.com", follow_redirects=False)
    test.cookies.update(cookies(3600))
    assert test.get("/api/swap").json() == {"error": "missing_session"}
