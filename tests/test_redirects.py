from __future__ import annotations

import pytest

from consent_middleware._redirects import (
    MAX_RETURN_TO,
    bounded_return_to,
    return_to_or_home,
    returnable,
    safe_return_to,
)

BASE = "https://app.example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dashboard?x=1#top", f"{BASE}/dashboard?x=1#top"),
        ("dashboard", f"{BASE}/dashboard"),
        (f"{BASE}/a/b?c=d", f"{BASE}/a/b?c=d"),
        ("/files/a%2Fb?q=%2F%2F", f"{BASE}/files/a%2Fb?q=%2F%2F"),  # encoded, not leading
        ("/", f"{BASE}/"),
        # The same origin in capitals (RFC 3986 3.1, 3.2.2: scheme and host are case-blind).
        ("HTTPS://APP.EXAMPLE.COM/x?Y=1", f"{BASE}/x?Y=1"),
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


def test_return_addresses_longer_than_the_cap_are_refused() -> None:
    # The cap counts what follows the origin, however the value was written.
    fits = "/search?q=" + "a" * (MAX_RETURN_TO - len("/search?q="))
    assert safe_return_to(fits, BASE) == BASE + fits
    assert safe_return_to(BASE + fits, BASE) == BASE + fits
    assert safe_return_to(fits + "a", BASE) is None
    assert safe_return_to(BASE + fits + "a", BASE) is None
    assert safe_return_to("/a#" + "b" * MAX_RETURN_TO, BASE) is None
    assert return_to_or_home(fits + "a", BASE) == f"{BASE}/"


@pytest.mark.parametrize("prefix", ["", BASE])
def test_bounded_return_to_keeps_the_path_of_a_long_address(prefix: str) -> None:
    fits = "/search?q=" + "a" * (MAX_RETURN_TO - len("/search?q="))
    assert bounded_return_to(prefix + fits) == prefix + fits
    assert bounded_return_to(prefix + fits + "a") == prefix + "/search"
    assert bounded_return_to(prefix + "/" + "p" * MAX_RETURN_TO + "?q=1") == prefix + "/"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/dashboard?x=1", "/dashboard?x=1"),
        ("/search?q=" + "a" * MAX_RETURN_TO, "/search"),
        # Addresses the login would refuse: the user signs in and lands home instead.
        ("//evil.example/x", f"{BASE}/"),
        ("/\\evil.example", f"{BASE}/"),
        ("/a\r\nSet-Cookie: x=1", f"{BASE}/"),
        ("/%2F%2Fevil.example", f"{BASE}/"),
    ],
)
def test_a_refused_requests_address_is_one_the_login_follows(address: str, expected: str) -> None:
    kept = returnable(address, BASE)
    assert kept == expected
    assert safe_return_to(kept, BASE) is not None
