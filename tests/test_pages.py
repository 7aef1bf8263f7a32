"""Pages: the one mapping from package errors to what the user sees, and overrides."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from consent_middleware._exceptions import (
    ConsentMiddlewareError,
    IdentityProviderError,
    IdTokenError,
    ManagementAPIError,
    RefreshError,
    SharedStateError,
    TokenEndpointError,
)
from consent_middleware._pages import Pages
from consent_middleware._transactions import Expectation
from tests.conftest import make_settings

SECRET_LOOKING = "eyJhbGciOiJSUzI1NiJ9.secret.token"


@pytest.mark.parametrize(
    ("error", "status", "shown"),
    [
        (IdTokenError("the ID token has expired"), 400, "the ID token has expired"),
        (TokenEndpointError("invalid_grant", SECRET_LOOKING), 400, "invalid_grant"),
        (IdentityProviderError("the JWKS answered HTTP 500"), 502, "Please try again"),
        (SharedStateError("the shared store did not answer"), 503, "Temporarily unavailable"),
        (ManagementAPIError("PATCH user answered HTTP 500", 500), 503, "could not be saved"),
        (RefreshError("the session holds no refresh token"), 401, "sign in again"),
        (ConsentMiddlewareError("anything else"), 401, "sign in again"),
    ],
    ids=["id-token", "token-endpoint", "idp", "shared-state", "management", "refresh", "base"],
)
def test_each_error_has_its_page(error: ConsentMiddlewareError, status: int, shown: str) -> None:
    response = Pages(make_settings()).for_error(error)
    body = bytes(response.body).decode()
    assert response.status_code == status
    assert shown.lower() in body.lower()
    # Explains without leaking: an error description is never echoed (it may hold a token).
    assert SECRET_LOOKING not in body
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


def test_the_provider_away_is_explained_without_its_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pages = Pages(make_settings())
    error = IdentityProviderError(
        "could not fetch the discovery document at "
        "https://tenant.example.com/.well-known/openid-configuration: ConnectError"
    )
    page = pages.for_error(error, return_to="https://app.example.com/reports?y=1")
    body = bytes(page.body).decode()
    assert page.status_code == 502 and "Sign-in service unavailable" in body
    assert "ConnectError" not in body and "openid-configuration" not in body
    assert "openid-configuration: ConnectError" in caplog.text  # for the operators
    retry = "https://app.example.com/auth/login?returnTo=https%3A%2F%2Fapp.example.com%2Freports%3Fy%3D1"
    assert f'href="{html.escape(retry)}">Try again</a>' in body
    # Only this app's own addresses are followed back; an API client just retries.
    foreign = pages.for_error(error, return_to="https://evil.example/")
    assert 'href="https://app.example.com/auth/login">Try again' in bytes(foreign.body).decode()
    assert bytes(pages.for_error(error, as_json=True).body) == b'{"error":"provider_unavailable"}'


def test_unavailable_as_json_and_status_pages() -> None:
    pages = Pages(make_settings())
    api = pages.unavailable(as_json=True)
    assert api.status_code == 503 and api.headers["retry-after"] == "5"
    assert bytes(api.body) == b'{"error":"temporarily_unavailable"}'
    assert pages.status(404).status_code == 404 and b"Not found" in bytes(pages.status(404).body)
    assert b"Method not allowed" in bytes(pages.status(405).body)
    loop = pages.not_shown_by_provider(Expectation.WITHDRAWAL)
    assert loop.status_code == 502 and b"the withdrawal" in bytes(loop.body)


def test_the_missing_claim_page_names_the_metadata_the_action_copies() -> None:
    # The record the package writes and the shipped Action reads (README "The claim
    # contract"): app_metadata, which a user cannot write; user_metadata only mirrors it.
    action = (Path(__file__).parents[1] / "actions" / "consent-claim.js").read_text()
    assert "event.user.app_metadata" in action
    body = bytes(Pages(make_settings()).not_shown_by_provider(Expectation.CONSENT).body).decode()
    assert "copies app_metadata.consent into the ID token" in body
    assert "user_metadata" not in body


def test_an_app_overrides_a_template_by_name(tmp_path: Path) -> None:
    (tmp_path / "error.html").write_text("<p>ours: {{ title }}</p>")
    pages = Pages(make_settings(templates_directory=str(tmp_path)))
    assert bytes(pages.status(404).body) == b"<p>ours: Not found</p>"
    # Templates it does not override still come from the package.
    assert b"Please review our terms" in bytes(
        pages.render(
            "consent.html", settings=make_settings(), consent=None, return_to="/", user={},
            statement="s", csrf_token="t", error=None, accepted=False, logout_url="/auth/logout",
            withdraw_url="/consent/withdraw", shown="d",
        ).body
    )  # fmt: skip


def test_an_apps_own_template_may_link_its_stylesheet() -> None:
    # Content-Security-Policy style-src: the site's own sheets too, not inline styles only.
    page = Pages(make_settings()).status(404)
    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert "'self'" in policy["style-src"].split() and policy["frame-ancestors"] == "'none'"
