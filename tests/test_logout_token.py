"""Logout tokens (OIDC Back-Channel Logout 1.0, 2.6), verified with real RSA signatures."""

from __future__ import annotations

import time
from typing import Any

import pytest

from consent_middleware._exceptions import IdTokenError
from consent_middleware._jose import BACKCHANNEL_LOGOUT_EVENT, verify_logout_token
from tests.keys import SigningKey, hs256_with_public_key, unsigned_token

ISSUER = "https://tenant.example.com/"
CLIENT = "client-1"


def claims(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": int(time.time()),
        "jti": "jti-1",
        "sid": "sid-1",
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def verify(token: str, key: SigningKey) -> dict[str, Any]:
    return verify_logout_token(
        token, key.public_jwk, issuer=ISSUER, client_id=CLIENT, leeway=5, max_age=300
    )


def test_a_valid_logout_token(signing_key: SigningKey) -> None:
    verified = verify(signing_key.sign(claims(sub="auth0|1")), signing_key)
    assert verified["sid"] == "sid-1" and verified["sub"] == "auth0|1"
    # sub alone is enough (every session of the user).
    assert verify(signing_key.sign(claims(sid=None, sub="auth0|1")), signing_key)["sub"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "https://evil.example/"}, "claims are invalid"),
        ({"aud": "another-client"}, "claims are invalid"),
        ({"iat": None}, "claims are invalid"),
        ({"iat": int(time.time()) - 3600}, "not issued just now"),
        ({"iat": int(time.time()) + 3600}, "not issued just now"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"events": {}}, "no back-channel logout event"),
        ({"events": {BACKCHANNEL_LOGOUT_EVENT: "yes"}}, "no back-channel logout event"),
        ({"nonce": "n"}, "must not carry a nonce"),
        ({"sid": None}, "neither a session"),
        ({"jti": None}, "no jti"),
    ],
    ids=[
        "iss",
        "aud",
        "no-iat",
        "old",
        "future",
        "expired",
        "no-event",
        "event-not-object",
        "nonce",
        "no-sid-no-sub",
        "no-jti",
    ],
)
def test_refused_logout_tokens(
    signing_key: SigningKey, change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(IdTokenError, match=reason):
        verify(signing_key.sign(claims(**change)), signing_key)


def test_forged_and_downgraded_logout_tokens(
    signing_key: SigningKey, other_key: SigningKey
) -> None:
    with pytest.raises(IdTokenError, match="signature"):
        verify(other_key.sign(claims(), kid=signing_key.kid), signing_key)
    with pytest.raises(IdTokenError, match="not accepted"):
        verify(unsigned_token(claims()), signing_key)
    with pytest.raises(IdTokenError, match="not accepted"):
        verify(hs256_with_public_key(signing_key, claims()), signing_key)
