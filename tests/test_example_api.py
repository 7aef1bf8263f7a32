"""The example's protected API (``example_app/api.py``), which people copy: every claim it
needs required, a rotated key picked up, the provider away a 503 that is not kept. Tokens
are signed with the dev tenant's own keys and checked against its published JWKS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jose import jwt

from example_app import api
from example_app.api import ORDERS_API, RESOURCE_PATH
from tests.flow import Live, live_example


@pytest.fixture
def live() -> Iterator[Live]:
    with live_example() as running:
        yield running


def token(live: Live, **claims: Any) -> str:
    """A token of the tenant's current key; a claim given as None is left out."""
    key = live.tenant.keys.current
    now = int(time.time())
    body = {"iss": live.tenant.issuer, "aud": ORDERS_API, "sub": "auth0|x", "iat": now,
            "exp": now + 60, **claims}  # fmt: skip
    present = {name: value for name, value in body.items() if value is not None}
    headers = {"kid": key.kid}
    return str(jwt.encode(present, key.as_dict(private=True), algorithm="RS256", headers=headers))


def call(live: Live, bearer: str) -> httpx.Response:
    return httpx.get(f"{live.base}{RESOURCE_PATH}", headers={"authorization": f"Bearer {bearer}"})


def test_every_claim_the_api_relies_on_is_required(live: Live) -> None:
    answer = call(live, token(live))
    assert answer.status_code == 200 and answer.json()["sub"] == "auth0|x"
    # python-jose checks aud, exp, iss and sub only when present, unless required.
    for missing in ("aud", "exp", "iss", "sub"):
        refused = call(live, token(live, **{missing: None}))
        assert refused.status_code == 401, missing
        assert refused.json()["error"] == "invalid_token"
    for wrong in ({"aud": "https://other.example.com"}, {"exp": int(time.time()) - 10},
                  {"iss": "https://evil.example/"}):  # fmt: skip
        assert call(live, token(live, **wrong)).status_code == 401, wrong


def test_a_rotated_key_is_fetched_and_a_failed_fetch_is_not_kept(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "REFETCH_INTERVAL", 0)
    # The provider away at the first fetch: a 503, then served once it answers.
    live.tenant.fail_next("/.well-known/openid-configuration", 503)
    away = call(live, token(live))
    assert away.status_code == 503 and away.json()["error"] == "temporarily_unavailable"
    assert call(live, token(live)).status_code == 200
    # A token signed with a key not seen yet: fetched again, not refused for ten minutes.
    live.tenant.rotate_signing_key()
    assert call(live, token(live)).status_code == 200
    # A made-up key id is refused, however often it is tried.
    forged = jwt.get_unverified_header(token(live))["kid"] + "x"
    key = live.tenant.keys.current.as_dict(private=True)
    claims = {"iss": live.tenant.issuer, "aud": ORDERS_API, "sub": "s", "exp": time.time() + 60}
    made_up = jwt.encode(claims, key, algorithm="RS256", headers={"kid": forged})
    assert call(live, made_up).status_code == 401


def test_made_up_key_ids_never_make_the_api_hammer_the_provider(live: Live) -> None:
    def fetches() -> int:
        return sum(path.endswith("/openid-configuration") for _, path in live.tenant.requests)

    assert call(live, token(live)).status_code == 200
    before = fetches()
    key = live.tenant.keys.current.as_dict(private=True)
    claims = {"iss": live.tenant.issuer, "aud": ORDERS_API, "sub": "s", "exp": time.time() + 60}
    for kid in [f"made-up-{n}" for n in range(20)] + [["not", "a", "string"]]:
        made_up = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        assert call(live, made_up).status_code == 401
    assert fetches() == before  # a fetch was made a moment ago: none again so soon
