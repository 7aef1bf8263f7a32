"""Tokens for several APIs over real HTTP against the dev tenant, its access tokens lasting
five seconds: renewal after expiry, reuse before it, one grant for concurrent callers, the
audience check, faults, and nextjs-auth0's own code reading the ``accessTokens`` we write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from jose import jwt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from consent_middleware import ConsentMiddleware, Settings, get_access_token
from dev_tenant import DevTenant
from example_app.app import DEV_CLIENT_ID, DEV_TENANT_PATH, dev_tenant
from tests.conftest import make_settings
from tests.flow import CLAIM, CLIENT_SECRET, Browser
from tests.live_server import free_port, serve
from tests.test_nextjs_auth0 import cookie_header as written_cookies
from tests.test_nextjs_auth0 import nextjs_auth0

ORDERS = "https://orders.example.com"
REPORTS = "https://reports.example.com"
LIFETIME = 5
# nextjs-auth0's reader (tests/nextjs_auth0/session.mjs) is given this secret.
SECRET = make_settings().secret


async def call(request: Request) -> Response:
    params = request.query_params
    token = await get_access_token(
        request,
        audience=params.get("audience"),
        refresh=params.get("refresh") == "1",
        min_ttl=1,
    )
    return JSONResponse({"token": token.token, "expires_at": token.expires_at})


@dataclass
class Running:
    base: str
    tenant: DevTenant
    settings: Settings
    browsers: list[Browser] = field(default_factory=list)

    def grants(self) -> int:
        return sum(1 for method, path in self.tenant.requests if path.endswith("/oauth/token"))

    def signed_in(self) -> Browser:
        browser = Browser(self.base)
        self.browsers.append(browser)
        page = browser.login(browser.go("/call"))
        page = browser.accept(page)
        assert page.status_code == 200, page.text
        return browser

    def claims(self, token: str, audience: str) -> dict[str, Any]:
        """The token verified as the API would: signature against the tenant's JWKS."""
        keys = httpx.get(f"{self.settings.domain}/.well-known/jwks.json").json()
        verified: dict[str, Any] = jwt.decode(
            token, keys, algorithms=["RS256"], audience=audience, issuer=self.tenant.issuer
        )
        return verified


@contextmanager
def running(**options: Any) -> Iterator[Running]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings_options = options.pop("settings", {})
    tenant = dev_tenant(
        base,
        CLIENT_SECRET,
        CLAIM,
        access_token_lifetime=LIFETIME,
        apis=(ORDERS, REPORTS),
        **options,
    )
    settings = Settings(
        domain=base + DEV_TENANT_PATH,
        client_id=DEV_CLIENT_ID,
        client_secret=CLIENT_SECRET,
        secret=SECRET,
        app_base_url=base,
        consent_claim=CLAIM,
        terms_version="v1",
        terms_url=base + "/terms",
        audience=ORDERS,
        public_paths=(f"{DEV_TENANT_PATH}/*",),
        http_timeout=5.0,
        **settings_options,
    )
    app = Starlette(
        routes=[Route("/call", call), Mount(DEV_TENANT_PATH, tenant)],
        middleware=[Middleware(ConsentMiddleware, settings=settings)],
    )
    live = Running(base, tenant, settings)
    try:
        with serve(app, port=port):
            yield live
    finally:
        for browser in live.browsers:
            browser.client.close()


def get(browser: Browser, **params: str) -> httpx.Response:
    return browser.client.get(
        browser.base + "/call", params=params, headers={"accept": "application/json"}
    )


def cookie_header(browser: Browser) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in browser.client.cookies.jar)


def test_tokens_are_reused_until_they_expire_then_renewed() -> None:
    with running() as live:
        browser = live.signed_in()
        first = get(browser).json()["token"]
        assert live.claims(first, ORDERS)["sub"]  # the login's audience, really signed
        grants = live.grants()
        report = get(browser, audience=REPORTS).json()
        assert live.grants() == grants + 1
        assert live.claims(report["token"], REPORTS)["sub"]
        # Still valid: no I/O for either.
        assert get(browser).json()["token"] == first
        assert get(browser, audience=REPORTS).json()["token"] == report["token"]
        assert live.grants() == grants + 1
        time.sleep(max(report["expires_at"] - time.time(), 0) + 0.2)
        renewed = get(browser, audience=REPORTS).json()["token"]
        assert renewed != report["token"]
        assert live.claims(renewed, REPORTS)
        again = get(browser).json()["token"]
        assert again != first and live.claims(again, ORDERS)
        assert live.grants() == grants + 3


@pytest.mark.parametrize("audience", [None, REPORTS], ids=["own", "other"])
def test_twenty_concurrent_callers_on_an_expired_token_make_one_grant(
    audience: str | None,
) -> None:
    with running() as live:
        browser = live.signed_in()
        if audience:
            get(browser, audience=audience)
        time.sleep(LIFETIME + 0.2)
        header = cookie_header(browser)
        params = {"audience": audience} if audience else {}
        grants = live.grants()

        async def twenty() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=live.base) as client:
                return await asyncio.gather(
                    *(
                        client.get(
                            "/call",
                            params=params,
                            headers={"cookie": header, "accept": "application/json"},
                        )
                        for _ in range(20)
                    )
                )

        answers = asyncio.run(twenty())
        assert {a.status_code for a in answers} == {200}
        assert len({a.json()["token"] for a in answers}) == 1
        assert live.grants() == grants + 1


def test_the_audience_list_round_trips_through_nextjs_auth0() -> None:
    with running() as live:
        browser = live.signed_in()
        report = get(browser, audience=REPORTS).json()
        session = nextjs_auth0("read", {"cookie": cookie_header(browser)})
        assert session is not None
        (entry,) = session["accessTokens"]
        assert entry["audience"] == REPORTS and entry["accessToken"] == report["token"]
        assert entry["expiresAt"] == report["expires_at"]
        assert entry["token_type"].lower() == "bearer"
        assert set(entry["requestedScope"].split()) >= {"openid", "offline_access"}
        assert session["tokenSet"]["accessToken"] != report["token"]
        # What nextjs-auth0 writes back (updating the same session) we read, and the token
        # it holds is reused with no grant.
        written = nextjs_auth0("write", {"session": session})
        grants = live.grants()
        reused = httpx.get(
            live.base + "/call",
            params={"audience": REPORTS},
            headers={"cookie": written_cookies(written), "accept": "application/json"},
        )
        assert reused.status_code == 200 and reused.json()["token"] == report["token"]
        assert live.grants() == grants


def test_a_token_for_another_audience_is_refused_and_the_rotation_kept() -> None:
    with running(multi_resource_refresh=False) as live:
        browser = live.signed_in()
        refused = get(browser, audience=REPORTS)
        assert refused.status_code == 502
        assert refused.json()["error"] == "audience_mismatch"
        assert "__session" in refused.headers.get("set-cookie", "")
        # The refresh token the grant rotated is the one the browser holds now: the next
        # renewal works (a spent one would have revoked the whole family).
        assert get(browser, refresh="1").status_code == 200


def test_revoked_refresh_token_is_a_login_and_an_outage_leaves_the_token() -> None:
    with running() as live:
        browser = live.signed_in()
        time.sleep(LIFETIME + 0.2)
        live.tenant.fail_next("/oauth/token", 503)
        down = get(browser, audience=REPORTS)
        assert down.status_code == 503 and "set-cookie" not in down.headers
        assert get(browser, audience=REPORTS).status_code == 200
        live.tenant.revoke_refresh_tokens()
        refused = get(browser, audience=REPORTS, refresh="1")
        assert refused.status_code == 401 and refused.json()["error"] == "login_required"
        page = browser.client.get(
            browser.base + "/call", params={"audience": REPORTS, "refresh": "1"},
            headers={"accept": "text/html"},
        )  # fmt: skip
        assert page.status_code in (302, 303, 307) and "/auth/login" in page.headers["location"]


def test_the_browser_route_and_rfc_8707_resource() -> None:
    with running(settings={"audience_parameter": "resource"}) as live:
        browser = live.signed_in()
        headers = {"accept": "application/json", "sec-fetch-site": "same-origin"}
        answer = browser.client.get(
            live.base + "/auth/access-token", params={"audience": REPORTS}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["audience"] == REPORTS
        assert live.claims(answer.json()["token"], REPORTS)
        # The session's own API, named: its token, with the audience in the answer too.
        own = browser.client.get(
            live.base + "/auth/access-token", params={"audience": ORDERS}, headers=headers
        )
        assert own.json()["audience"] == ORDERS and live.claims(own.json()["token"], ORDERS)
        bad = browser.client.get(
            live.base + "/auth/access-token", params={"audience": "not a uri"}, headers=headers
        )
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_audience"


def test_an_api_the_provider_refuses_is_a_page_not_a_login_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Auth0 answers a refresh for an API it does not know with access_denied ("Service
    # not found"), and would again right after a login: a login here loops forever.
    typo = "https://typo.example.com"
    with running() as live:
        browser = live.signed_in()
        refused = get(browser, audience=typo)
        assert refused.status_code == 403 and refused.json()["error"] == "audience_refused"
        # Asked again (a widget polling it): the same answer, remembered a minute, with no
        # further grant spent against the provider's rate limit.
        grants = live.grants()
        assert get(browser, audience=typo).json()["error"] == "audience_refused"
        assert live.grants() == grants
        page = browser.client.get(
            browser.base + "/call", params={"audience": typo}, headers={"accept": "text/html"}
        )
        assert page.status_code == 403 and "location" not in page.headers
        assert "configuration needs attention" in page.text
        headers = {"accept": "application/json", "sec-fetch-site": "same-origin"}
        route = browser.client.get(
            live.base + "/auth/access-token", params={"audience": typo}, headers=headers
        )
        assert route.status_code == 403 and route.json()["error"] == "audience_refused"
        assert f"the provider refused a token for '{typo}'" in caplog.text
        # The session is untouched: its own token and the other APIs still come.
        assert get(browser, audience=REPORTS).status_code == 200
