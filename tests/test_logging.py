"""Access lines without the credentials a URL carries."""

from __future__ import annotations

import logging

import pytest

from consent_middleware import RedactedQuery
from consent_middleware._logging import redacted


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/auth/callback?code=abc&state=xyz", "/auth/callback?code=[redacted]&state=[redacted]"),
        ("/cb?CODE=abc&x=1", "/cb?CODE=[redacted]&x=1"),
        ("/cb?x=1&id_token_hint=e.y.j#frag", "/cb?x=1&id_token_hint=[redacted]#frag"),
        ("/search?postcode=1234&statement=a", "/search?postcode=1234&statement=a"),
        ("/plain", "/plain"),
        # A plain value is hidden whole, escapes in it included.
        ("/login?password=hunter%262secret&x=1", "/login?password=[redacted]&x=1"),
        ("/cb?code=abc%23def", "/cb?code=[redacted]"),
        # Escaped inside a returnTo, as the gate sends a signed-out visitor to the login.
        (
            "/auth/login?returnTo=%2Freset%3Ftoken%3DSECRET%26lang%3Den&x=1",
            "/auth/login?returnTo=%2Freset%3Ftoken%3D[redacted]%26lang%3Den&x=1",
        ),
        (
            "/auth/login?returnTo=%2Fa%3fx%3D1%26Password%3dhunter2",
            "/auth/login?returnTo=%2Fa%3fx%3D1%26Password%3d[redacted]",
        ),
        (
            "/auth/login?returnTo=%2Fdashboard%3Fview%3Dall",
            "/auth/login?returnTo=%2Fdashboard%3Fview%3Dall",
        ),
    ],
)
def test_credential_parameters_are_hidden_and_no_others(target: str, shown: str) -> None:
    assert redacted(target) == shown


def test_the_filter_rewrites_uvicorns_access_arguments() -> None:
    args = ("127.0.0.1:5000", "GET", "/auth/callback?code=abc", "1.1", 303)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "%s %s %s %s %d", args, None)
    assert RedactedQuery().filter(record)
    assert record.getMessage() == "127.0.0.1:5000 GET /auth/callback?code=[redacted] 1.1 303"
    other = logging.LogRecord("x", logging.INFO, "", 0, "no arguments", None, None)
    assert RedactedQuery().filter(other) and other.getMessage() == "no arguments"
