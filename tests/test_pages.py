"""Pages.for_error: each package error becomes its own page, naming no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from consent_middleware._exceptions import (
    ConsentMiddlewareError,
    IdentityProviderError,
    IdTokenError,
    ManagementAPIError,
    RefreshError,
    TokenEndpointError,
)
from consent_middleware._pages import Pages
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("error", "status", "title", "signs_in_again"),
    [
        (IdTokenError("bad nonce"), 400, "Sign-in rejected", False),
        (TokenEndpointError("invalid_grant", "nope"), 400, "Sign-in failed", True),
        (IdentityProviderError("timeout"), 502, "Sign-in service unavailable", False),
        (ManagementAPIError("HTTP 503", 503), 503, "Service unavailable", False),
        (RefreshError("no refresh token"), 401, "Session could not be renewed", True),
    ],
)
def test_each_error_has_its_page(
    error: ConsentMiddlewareError, status: int, title: str, signs_in_again: bool
) -> None:
    response = Pages(make_settings()).for_error(error)
    body = bytes(response.body).decode()
    assert response.status_code == status and title in body
    assert ('href="https://app.example.com/auth/login"' in body) is signs_in_again
    assert response.headers["cache-control"] == "no-store"


def test_templates_directory_overrides_by_name(tmp_path: Path) -> None:
    (tmp_path / "error.html").write_text("custom {{ title }}")
    pages = Pages(make_settings(templates_directory=str(tmp_path)))
    response = pages.status(404)
    assert bytes(response.body).decode() == "custom Not found"
    assert bytes(pages.status(418).body).decode() == "custom Request refused"
