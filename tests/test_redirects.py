from __future__ import annotations

import pytest

from consent_middleware._redirects import return_to_or_home, safe_return_to

BASE = "https://app.example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dashboard?x=1#top", f"{BASE}/dashboard?x=1#top"),
        ("dashboard", f"{BASE}/dashboard"),
        (f"{BASE}/a/b?c=d", f"{BASE}/a/b?c=d"),
        ("/files/a%2Fb?q=%2F%2F", f"{BASE}/files/a%2Fb?q=%2F%2F"),  # encoded, not leading
        ("/", f"{BASE}/"),
    ],
)
def test_same_origin_targets_are_kept(value: str, expected: str) -> None:
    assert safe_return_to(value, BASE) == expected


@pytest.mark.parametrize(
    "value",
    [
        "https://other.site",
        "https://other.site/dashboard",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,hi",
        "http://app.example.com/",  # scheme differs
        "https://app.example.com:8443/",  # port differs
        "https://user:pass@app.example.com/",
        "https://app.example.com.evil.example/",
        "/ok\r\nSet-Cookie: a=b",
        "/ok\nx",
        "/\tevil",
        "\x00/",
        " //evil.example",
        "/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2f%2fevil.example",
        "/%5Cevil.example",
        "/%5C%5Cevil.example",
        "/ok%0d%0aSet-Cookie:%20a=b",
        "/%09/evil.example",
        "%252F%252Fevil.example/../%2F%2Fx",
    ],
)
def test_other_origins_and_tricks_are_refused(value: str) -> None:
    assert safe_return_to(value, BASE) is None


def test_fallback_home() -> None:
    assert return_to_or_home("https://other.site", BASE) == f"{BASE}/"
    assert return_to_or_home(None, BASE) == f"{BASE}/"
