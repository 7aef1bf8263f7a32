"""The embedded dev tenant over real HTTP: the OIDC provider and the Management API subset."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from consent_middleware import _jose
from dev_tenant import DevClient, DevTenant
from tests.live_server import serve

CLAIM = "https://consent.example.com/consent"
REDIRECT = "http://127.0.0.1/callback"


@dataclass
class Tenant:
    app: DevTenant
    base: str
    http: httpx.Client
    client: DevClient

    def token(self, **form: str) -> httpx.Response:
        auth = (self.client.client_id, self.client.client_secret)
        return self.http.post(f"{self.base}/oauth/token", data=form, auth=auth)

    def authorize(self, **params: str) -> tuple[httpx.Response, str]:
        """Start an authorization; returns the response and the PKCE verifier."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": REDIRECT,
            "scope": "openid profile email offline_access",
            "state": "st",
            "nonce": "n-0S6",
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
            **params,
        }
        return self.http.get(f"{self.base}/authorize", params=query), verifier

    def log_in(
        self,
        response: httpx.Response,
        email: str = "dev@example.com",
        password: str = "dev-password",
        **extra: str,
    ) -> httpx.Response:
        form_page = self.http.get(response.headers["location"])
        fields = dict(re.findall(r'name="(state|csrf)" value="([^"]*)"', form_page.text))
        return self.http.post(
            f"{self.base}/u/login", data={**fields, "email": email, "password": password, **extra}
        )

    def code_flow(self, **params: str) -> dict[str, Any]:
        response, verifier = self.authorize(**params)
        if response.headers["location"].startswith(f"{self.base}/u/login"):
            response = self.log_in(response)
        code = callback_params(response)["code"]
        tokens = self.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=REDIRECT,
            code_verifier=verifier,
        )
        assert tokens.status_code == 200, tokens.text
        body: dict[str, Any] = tokens.json()
        return body

    def claims(self, id_token: str) -> dict[str, Any]:
        """Verified with the package's own checks against the published JWKS."""
        keys = _jose.KeySet(self.http.get(f"{self.base}/.well-known/jwks.json").json())
        key = keys.find(_jose.unverified_header(id_token).get("kid"), "RS256")
        assert key is not None
        return _jose.verify_id_token(
            id_token,
            key,
            issuer=self.app.issuer,
            client_id=self.client.client_id,
            nonce=None,
            leeway=5,
        )

    def management_token(self) -> str:
        response = self.token(
            grant_type="client_credentials", audience=self.app.state.management_audience
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def api(self, method: str, user_id: str, token: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(
            method,
            f"{self.base}/api/v2/users/{user_id}",
            headers={"authorization": f"Bearer {token}"},
            **kwargs,
        )


def callback_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    holder: dict[str, DevTenant] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await holder["app"](scope, receive, send)

    with serve(app) as base:
        client = DevClient("app", "app-secret", [REDIRECT], ["http://127.0.0.1/"])
        holder["app"] = DevTenant(base, [client], CLAIM)
        with httpx.Client(timeout=10) as http:
            yield Tenant(holder["app"], base, http, client)


def test_discovery_and_jwks(tenant: Tenant) -> None:
    doc = tenant.http.get(f"{tenant.base}/.well-known/openid-configuration").json()
    assert doc["issuer"] == tenant.base + "/"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["end_session_endpoint"] == f"{tenant.base}/oidc/logout"
    keys = tenant.http.get(doc["jwks_uri"]).json()["keys"]
    assert [(k["kty"], k["alg"]) for k in keys] == [("RSA", "RS256")]
    assert "d" not in keys[0]  # never the private part


def test_code_flow_issues_verifiable_tokens(tenant: Tenant) -> None:
    tokens = tenant.code_flow()
    claims = tenant.claims(tokens["id_token"])
    assert claims["email"] == "dev@example.com" and claims["nonce"] == "n-0S6"
    assert claims["sub"].startswith("auth0|") and CLAIM not in claims
    assert tokens["refresh_token"] and tokens["expires_in"] == 3600
    info = tenant.http.get(
        f"{tenant.base}/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}
    )
    assert info.json()["sub"] == claims["sub"]


def test_no_offline_access_no_refresh_token(tenant: Tenant) -> None:
    assert "refresh_token" not in tenant.code_flow(scope="openid email")


def test_pkce_is_required_and_checked(tenant: Tenant) -> None:
    response, _ = tenant.authorize(code_challenge="", code_challenge_method="")
    assert callback_params(response)["error"] == "invalid_request"
    response, _ = tenant.authorize()
    code = callback_params(tenant.log_in(response))["code"]
    wrong = tenant.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=secrets.token_urlsafe(48),
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_a_code_works_once(tenant: Tenant) -> None:
    response, verifier = tenant.authorize()
    code = callback_params(tenant.log_in(response))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    assert tenant.token(**form).status_code == 200
    assert tenant.token(**form).json()["error"] == "invalid_grant"


def test_unknown_redirect_uri_is_not_redirected_to(tenant: Tenant) -> None:
    response, _ = tenant.authorize(redirect_uri="https://evil.example/cb")
    assert response.status_code == 400 and "evil.example" not in response.headers.get(
        "location", ""
    )


def test_wrong_client_secret_is_refused(tenant: Tenant) -> None:
    response = tenant.http.post(
        f"{tenant.base}/oauth/token",
        auth=("app", "nope"),
        data={"grant_type": "client_credentials"},
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_prompt_none_needs_an_idp_session(tenant: Tenant) -> None:
    response, _ = tenant.authorize(prompt="none")
    params = callback_params(response)
    assert params["error"] == "login_required" and params["state"] == "st"
    tenant.code_flow()  # logs in, sets the SSO cookie
    response, _ = tenant.authorize(prompt="none")
    assert "code" in callback_params(response)
    tenant.app.end_all_sessions()
    response, _ = tenant.authorize(prompt="none")
    assert callback_params(response)["error"] == "login_required"


def test_refresh_rotates_and_carries_the_current_consent(tenant: Tenant) -> None:
    tokens = tenant.code_flow()
    sub = tenant.claims(tokens["id_token"])["sub"]
    consent = {"given": True, "version": "v1", "date": "2026-11-23T00:00:00.000Z"}
    stored = {**consent, "history": [{"action": "given", "version": "v1"}]}
    token = tenant.management_token()
    # The claim comes from app_metadata (as the shipped Action), without the history; a
    # record the user could write themself (user_metadata) is not read.
    forged = {"consent": {**consent, "version": "v9"}}
    body = {"app_metadata": {"consent": stored}, "user_metadata": forged}
    patched = tenant.api("PATCH", sub, token, json=body)
    assert patched.status_code == 200
    refreshed = tenant.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    body = refreshed.json()
    assert tenant.claims(body["id_token"])[CLAIM] == consent
    assert body["refresh_token"] != tokens["refresh_token"]
    reused = tenant.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_flagged_user_gets_no_tokens(tenant: Tenant) -> None:
    tokens = tenant.code_flow()
    sub = tenant.claims(tokens["id_token"])["sub"]
    tenant.api("PATCH", sub, tenant.management_token(), json={"app_metadata": {"deleted": True}})
    refreshed = tenant.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refreshed.status_code == 403 and refreshed.json()["error"] == "access_denied"
    response, _ = tenant.authorize(prompt="none")
    assert callback_params(response)["error"] == "access_denied"
    assert callback_params(response)["error_description"] == "user is blocked"


def test_login_form_checks_password_csrf_and_signs_up(tenant: Tenant) -> None:
    response, _ = tenant.authorize()
    wrong = tenant.log_in(response, password="not-the-password")
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    response, _ = tenant.authorize()
    forged = tenant.log_in(response, csrf="forged")
    assert forged.status_code == 403
    response, _ = tenant.authorize()
    assert "code" in callback_params(tenant.log_in(response, "new@example.com", "long-enough"))
    assert tenant.app.users.by_email("new@example.com") is not None


def test_logout_redirects_only_to_allowed_urls(tenant: Tenant) -> None:
    allowed = tenant.http.get(
        f"{tenant.base}/oidc/logout",
        params={"client_id": "app", "post_logout_redirect_uri": "http://127.0.0.1/"},
    )
    assert allowed.status_code == 302 and allowed.headers["location"] == "http://127.0.0.1/"
    other = tenant.http.get(
        f"{tenant.base}/v2/logout", params={"client_id": "app", "returnTo": "https://evil.example/"}
    )
    assert other.status_code == 400 and "location" not in other.headers


def test_management_token_audience_and_auth(tenant: Tenant) -> None:
    wrong = tenant.token(grant_type="client_credentials", audience="https://other/api/")
    assert wrong.status_code == 403
    user = tenant.app.users.by_email("dev@example.com")
    assert user is not None
    assert tenant.api("GET", user["user_id"], "not-a-token").status_code == 401
    # A user's access token is not a Management API token.
    user_token = tenant.code_flow()["access_token"]
    assert tenant.api("GET", user["user_id"], user_token).status_code == 401


def test_management_patch_merges_root_keys_only(tenant: Tenant) -> None:
    token = tenant.management_token()
    user = tenant.app.users.by_email("dev@example.com")
    assert user is not None
    uid = user["user_id"]
    tenant.api("PATCH", uid, token, json={"user_metadata": {"a": {"x": 1, "y": 2}, "b": 1}})
    response = tenant.api("PATCH", uid, token, json={"user_metadata": {"a": {"x": 3}, "b": None}})
    assert response.json()["user_metadata"] == {"a": {"x": 3}}
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert int(response.headers[header]) >= 0
    assert int(response.headers["x-ratelimit-reset"]) >= int(time.time())
    bad = tenant.api("PATCH", uid, token, content=b"{not json")
    assert bad.status_code == 400
    unknown = tenant.api("PATCH", uid, token, json={"password": "x"})
    assert unknown.status_code == 400 and tenant.app.users.get(uid) is not None


def test_management_delete(tenant: Tenant) -> None:
    token = tenant.management_token()
    user = tenant.app.users.create("gone@example.com", "long-enough")
    assert tenant.api("DELETE", user["user_id"], token).status_code == 204
    missing = tenant.api("GET", user["user_id"], token)
    assert missing.status_code == 404 and missing.json()["statusCode"] == 404


def test_key_rotation_publishes_both_keys(tenant: Tenant) -> None:
    before = tenant.code_flow()["id_token"]
    tenant.app.rotate_signing_key()
    after = tenant.code_flow()["id_token"]
    assert _jose.unverified_header(before)["kid"] != _jose.unverified_header(after)["kid"]
    assert tenant.claims(before)["sub"] == tenant.claims(after)["sub"]


def test_fail_next_injects_failures_then_recovers(tenant: Tenant) -> None:
    tenant.app.fail_next("/oauth/token", 503, times=2, headers={"retry-after": "1"})
    assert tenant.token(grant_type="client_credentials").status_code == 503
    second = tenant.token(grant_type="client_credentials")
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert json.loads(second.text)["statusCode"] == 503
    assert tenant.management_token()


def test_plain_pkce_is_refused(tenant: Tenant) -> None:
    response, _ = tenant.authorize(code_challenge="a" * 43, code_challenge_method="")
    assert callback_params(response)["error"] == "invalid_request"


def test_reusing_a_spent_refresh_token_revokes_the_family(tenant: Tenant) -> None:
    first = tenant.code_flow()["refresh_token"]
    second = tenant.token(grant_type="refresh_token", refresh_token=first).json()["refresh_token"]
    assert tenant.token(grant_type="refresh_token", refresh_token=first).status_code == 400
    assert tenant.token(grant_type="refresh_token", refresh_token=second).status_code == 400


def test_bad_input_is_a_4xx_not_a_500(tenant: Tenant) -> None:
    garbled = tenant.http.post(
        f"{tenant.base}/oauth/token",
        headers={"authorization": "Basic /w=="},
        data={"grant_type": "client_credentials"},
    )
    assert garbled.status_code == 401
    user = tenant.app.users.by_email("dev@example.com")
    assert user is not None
    deep = tenant.api("PATCH", user["user_id"], tenant.management_token(), content=b"[" * 100_000)
    assert deep.status_code == 400


def test_each_logout_endpoint_reads_only_its_own_parameter(tenant: Tenant) -> None:
    wrong = tenant.http.get(
        f"{tenant.base}/oidc/logout", params={"client_id": "app", "returnTo": "http://127.0.0.1/"}
    )
    assert wrong.status_code == 200 and "location" not in wrong.headers
    right = tenant.http.get(
        f"{tenant.base}/v2/logout", params={"client_id": "app", "returnTo": "http://127.0.0.1/"}
    )
    assert right.status_code == 302
