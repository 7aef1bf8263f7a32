from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest
import respx

from consent_middleware._exceptions import ManagementAPIError
from consent_middleware._management import ManagementClient
from consent_middleware._oidc import OIDCClient
from tests.conftest import DOMAIN, Sleeps, idp, make_settings

TOKEN_URL = f"{DOMAIN}/oauth/token"
USER_URL = f"{DOMAIN}/api/v2/users/auth0%7Cabc"

pytestmark = pytest.mark.anyio


def management(
    http: httpx.AsyncClient, sleeps: Sleeps | None = None, **settings: object
) -> ManagementClient:
    s = make_settings(mgmt_client_id="m2m", mgmt_client_secret="m2m-secret", **settings)
    return ManagementClient(s, OIDCClient(s, http), sleep=sleeps or Sleeps())


def tenant(mock: respx.MockRouter, methods: list[str] | None = None) -> respx.Route:
    idp(mock, [], token_endpoint_auth_methods_supported=methods or ["client_secret_post"])
    return mock.post(TOKEN_URL).respond(
        json={"access_token": "mgmt-token", "expires_in": 86400, "token_type": "Bearer"}
    )


async def test_token_request_and_patch(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        patch = mock.patch(USER_URL).respond(json={"user_id": "auth0|abc"})
        body = {"user_metadata": {"consent": {"given": True}}}
        assert await client.update_user("auth0|abc", body) == {"user_id": "auth0|abc"}
    form = dict(httpx.QueryParams(token.calls.last.request.content.decode()))
    assert form == {
        "grant_type": "client_credentials",
        "audience": f"{DOMAIN}/api/v2/",
        "client_id": "m2m",
        "client_secret": "m2m-secret",
    }
    request = patch.calls.last.request
    assert request.headers["authorization"] == "Bearer mgmt-token"
    assert request.content == b'{"user_metadata":{"consent":{"given":true}}}'


async def test_token_is_cached_and_fetched_once_under_concurrency(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        mock.get(USER_URL).respond(json={"user_id": "auth0|abc"})
        await asyncio.gather(*(client.get_user("auth0|abc") for _ in range(25)))
        await client.get_user("auth0|abc")
    assert token.call_count == 1
    assert client.token_fetches == 1


async def test_token_expiry_margin_triggers_a_new_fetch(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        token.respond(json={"access_token": "short", "expires_in": 61})
        await client.access_token()
        time.sleep(1.1)  # the token is usable for 61 - 60 = 1 s
        await client.access_token()
    assert token.call_count == 2


async def test_a_rate_limited_token_request_is_tried_again(http: httpx.AsyncClient) -> None:
    # Auth0 answers a rate-limited client-credentials grant 429 "too_many_requests": an
    # outage to wait out, not a refused Management API token.
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        granted = token.side_effect = [
            httpx.Response(429, json={"error": "too_many_requests"}),
            httpx.Response(200, json={"access_token": "mgmt-token", "expires_in": 86400}),
        ]
        mock.get(USER_URL).respond(json={"user_id": "auth0|abc"})
        assert await client.get_user("auth0|abc") == {"user_id": "auth0|abc"}
    assert token.call_count == len(granted) and len(sleeps.calls) == 1


async def test_429_honours_retry_after_then_succeeds(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        route = mock.patch(USER_URL)
        route.side_effect = [
            httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "slow down"}),
            httpx.Response(200, json={"ok": True}),
        ]
        assert await client.update_user("auth0|abc", {}) == {"ok": True}
    assert sleeps.calls == [2.0]


async def test_429_uses_x_ratelimit_reset(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    reset = str(int(time.time()) + 3)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        mock.get(USER_URL).side_effect = [
            httpx.Response(429, headers={"x-ratelimit-reset": reset}),
            httpx.Response(200, json={}),
        ]
        await client.get_user("auth0|abc")
    assert 1.5 < sleeps.calls[0] <= 3


async def test_503_and_timeouts_are_retried_with_backoff(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        mock.patch(USER_URL).side_effect = [
            httpx.Response(503),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json={"ok": 1}),
        ]
        assert await client.update_user("auth0|abc", {}) == {"ok": 1}
    assert sleeps.calls == [0.25, 0.5]


async def test_final_failure_is_a_management_error(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        route = mock.patch(USER_URL).respond(503)
        with pytest.raises(ManagementAPIError, match="503"):
            await client.update_user("auth0|abc", {})
    assert route.call_count == 4
    assert len(sleeps.calls) == 3


async def test_retry_after_beyond_the_budget_fails_at_once(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        route = mock.patch(USER_URL).respond(429, headers={"Retry-After": "3600"})
        with pytest.raises(ManagementAPIError, match="429"):
            await client.update_user("auth0|abc", {})
    assert route.call_count == 1 and sleeps.calls == []


async def test_client_errors_are_not_retried(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        route = mock.get(USER_URL).respond(404, json={"message": "The user does not exist."})
        with pytest.raises(ManagementAPIError, match="does not exist") as info:
            await client.get_user("auth0|abc")
    assert info.value.status_code == 404 and route.call_count == 1


async def test_401_refetches_the_token_once(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        mock.get(USER_URL).side_effect = [httpx.Response(401), httpx.Response(200, json={})]
        await client.get_user("auth0|abc")
    assert token.call_count == 2


async def test_delete_answers_204(http: httpx.AsyncClient) -> None:
    client = management(
        http,
    )
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock, ["client_secret_basic"])
        route = mock.delete(USER_URL).respond(204)
        await client.delete_user("auth0|abc")
    assert route.called


async def test_token_request_retries_429_and_outages_then_refusal_is_final(
    http: httpx.AsyncClient,
) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        token.side_effect = [
            httpx.Response(429, json={"error": "too_many_requests"}),
            httpx.Response(502),
            httpx.Response(200, json={"access_token": "mgmt-token", "expires_in": 600}),
        ]
        assert await client.access_token() == "mgmt-token"
        assert sleeps.calls == [0.25, 0.5]
    refused = management(http, Sleeps())
    with respx.mock(assert_all_called=False) as mock:
        token = tenant(mock)
        token.respond(401, json={"error": "access_denied", "error_description": "no grant"})
        told = "Management API token: access_denied: no grant"
        with pytest.raises(ManagementAPIError, match=told) as info:
            await refused.update_user("auth0|abc", {})
    assert token.call_count == 1 and info.value.status_code == 401


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json=[1, 2]), "not an object"),
        (httpx.Response(400, text="nope"), "HTTP 400: no details"),
        (httpx.Response(400, json=["x"]), "HTTP 400: no details"),
        (httpx.Response(400, json={"error": "Bad Request"}), "HTTP 400: Bad Request"),
    ],
    ids=["not-json", "not-object", "error-not-json", "error-not-object", "error-field"],
)
async def test_unusable_answers_are_management_errors(
    http: httpx.AsyncClient, answer: httpx.Response, expected: str
) -> None:
    client = management(http)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        mock.get(USER_URL).mock(return_value=answer)
        with pytest.raises(ManagementAPIError, match=expected):
            await client.get_user("auth0|abc")


async def test_retry_after_as_an_http_date(http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    client = management(http, sleeps)
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    with respx.mock(assert_all_called=False) as mock:
        tenant(mock)
        mock.get(USER_URL).side_effect = [
            httpx.Response(429, headers={"Retry-After": when}),
            httpx.Response(200, json={}),
        ]
        await client.get_user("auth0|abc")
    assert 1.5 < sleeps.calls[0] <= 3
