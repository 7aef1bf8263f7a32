from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from consent_middleware._exceptions import IdTokenError
from consent_middleware._jose import KeySet, decrypt, derive_key, encrypt, verify_id_token
from tests.keys import SigningKey, hs256_with_public_key, id_token_claims, unsigned_token

ISSUER = "https://tenant.example.com/"
CLIENT = "client-1"


def verify(token: str, key: SigningKey, nonce: str | None = "n-1") -> dict[str, object]:
    return verify_id_token(
        token, key.public_jwk, issuer=ISSUER, client_id=CLIENT, nonce=nonce, leeway=60
    )


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_hkdf_key_matches_nextjs_auth0_derivation() -> None:
    # HKDF-SHA256(ikm=secret, salt="", info="JWE CEK", L=32), computed independently
    # with RFC 5869's extract-then-expand using hmac.
    import hashlib
    import hmac

    secret = "a" * 32
    prk = hmac.new(b"\x00" * 32, secret.encode(), hashlib.sha256).digest()
    okm = hmac.new(prk, b"JWE CEK" + b"\x01", hashlib.sha256).digest()
    assert derive_key(secret) == okm


def test_cookie_round_trip_and_header() -> None:
    key = derive_key("k" * 32)
    token = encrypt({"user": {"sub": "u"}}, key, int(time.time()) + 60)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "dir", "enc": "A256GCM"}
    assert token.split(".")[1] == ""  # dir: no encrypted key
    payload = decrypt(token, [key])
    assert payload is not None and payload["user"] == {"sub": "u"}


def test_decrypt_rejects_expired_wrong_key_tampered_and_garbage() -> None:
    key = derive_key("k" * 32)
    now = time.time()
    assert decrypt(encrypt({}, key, int(now) - 16), [key], now) is None
    assert decrypt(encrypt({}, key, int(now) - 10), [key], now) is not None  # 15 s skew
    token = encrypt({"a": 1}, key, int(now) + 60)
    assert decrypt(token, [derive_key("x" * 32)]) is None
    parts = token.split(".")
    flipped = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]
    assert decrypt(".".join([*parts[:3], flipped, parts[4]]), [key]) is None
    for junk in ["", "a.b.c.d.e", token[:40], "%%%", "....", "é" * 10]:
        assert decrypt(junk, [key]) is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_fast_path_checks_what_python_jose_checks() -> None:
    # The cookie's own shape is opened with AES-GCM directly: every part must still hold.
    key = derive_key("k" * 32)
    token = encrypt({"a": 1}, key, int(time.time()) + 60)
    header, _, iv, ciphertext, tag = token.split(".")
    tampered = {
        "tag": ".".join([header, "", iv, ciphertext, _b64(bytes(16))]),
        "iv": ".".join([header, "", _b64(bytes(12)), ciphertext, tag]),
        "short iv": ".".join([header, "", _b64(bytes(8)), ciphertext, tag]),
        "short tag": ".".join([header, "", iv, ciphertext, tag[:-4]]),
        # The header is the AAD: the same ciphertext under another spelling fails.
        "header": ".".join([_b64(b'{"enc":"A256GCM","alg":"dir"}'), "", iv, ciphertext, tag]),
        "stray characters": ".".join(
            [header, "", iv, ciphertext[:10] + "!" + ciphertext[10:], tag]
        ),
        "padding": ".".join([header, "", iv, ciphertext + "==", tag]),
        "a sixth part": token + ".x",
    }
    for name, value in tampered.items():
        assert decrypt(value, [key]) is None, name
    # Not valid JSON inside a valid seal: not a session.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(range(12))
    sealed = AESGCM(key).encrypt(nonce, b"not json", header.encode())
    assert (
        decrypt(".".join([header, "", _b64(nonce), _b64(sealed[:-16]), _b64(sealed[-16:])]), [key])
        is None
    )
    # RFC 7518 5.3: a 96-bit IV and a 128-bit tag, whatever AES-GCM itself would accept,
    # and no padding to move the boundary between ciphertext and tag.
    plaintext = json.dumps({"a": 1, "exp": int(time.time()) + 60}).encode()
    for size in (10, 11):
        nonce = bytes(range(size))
        sealed = AESGCM(key).encrypt(nonce, plaintext, header.encode())
        body, seal = _b64(sealed[:-16]), _b64(sealed[-16:])
        padded = base64.urlsafe_b64encode(nonce).decode()
        for spelled in (_b64(nonce), padded, padded.ljust(16, "=")):
            assert decrypt(".".join([header, "", spelled, body, seal]), [key]) is None, spelled
    sealed = AESGCM(key).encrypt(bytes(range(12)), plaintext, header.encode())
    shifted = [_b64(sealed[:-15]), _b64(sealed[-15:]) + "=="]  # the same bytes, cut later
    assert len(shifted[1]) == len(tag)
    assert decrypt(".".join([header, "", _b64(bytes(range(12))), *shifted]), [key]) is None
    # Outside base64url's alphabet (python-jose's decoder would skip it): not a JWE.
    assert (
        decrypt(".".join([header, "", iv[:5] + "\u00a0" + iv[5:], ciphertext, tag]), [key]) is None
    )
    # Opened from the request's bytes as from text.
    opened = decrypt(token.encode(), [key])
    assert opened is not None and opened["a"] == 1 and opened == decrypt(token, [key])
    # Any other header (here "zip") is python-jose's to decide.
    zipped = _b64(b'{"alg":"dir","enc":"A256GCM","zip":"DEF"}')
    assert decrypt(".".join([zipped, "", iv, ciphertext, tag]), [key]) is None


def test_decrypt_tries_every_key_in_order() -> None:
    old, new = derive_key("o" * 32), derive_key("n" * 32)
    token = encrypt({"a": 1}, old, int(time.time()) + 60)
    assert decrypt(token, [new, old]) is not None


def test_valid_id_token(signing_key: SigningKey) -> None:
    claims = verify(signing_key.sign(id_token_claims(ISSUER, CLIENT)), signing_key)
    assert claims["sub"] == "auth0|user1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "https://evil.example.com/"}, "claims are invalid"),
        ({"aud": "someone-else"}, "claims are invalid"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "future"),
        ({"nonce": "other"}, "nonce"),
        ({"azp": "someone-else"}, "authorized party"),
        ({"aud": [CLIENT, "api"]}, "authorized party"),
        ({"sub": ""}, "subject"),
    ],
)
def test_claim_rejections(signing_key: SigningKey, change: dict[str, object], reason: str) -> None:
    token = signing_key.sign({**id_token_claims(ISSUER, CLIENT), **change})
    with pytest.raises(IdTokenError, match=reason):
        verify(token, signing_key)


def test_multiple_audiences_with_matching_azp_pass(signing_key: SigningKey) -> None:
    token = signing_key.sign(id_token_claims(ISSUER, CLIENT, aud=[CLIENT, "api"], azp=CLIENT))
    assert verify(token, signing_key)["azp"] == CLIENT


def test_missing_nonce_when_one_was_sent(signing_key: SigningKey) -> None:
    with pytest.raises(IdTokenError, match="nonce"):
        verify(signing_key.sign(id_token_claims(ISSUER, CLIENT, nonce=None)), signing_key)


def test_signed_by_another_key(signing_key: SigningKey, other_key: SigningKey) -> None:
    token = other_key.sign(id_token_claims(ISSUER, CLIENT), kid=signing_key.kid)
    with pytest.raises(IdTokenError, match="signature"):
        verify(token, signing_key)


def test_alg_none_refused(signing_key: SigningKey) -> None:
    token = unsigned_token(id_token_claims(ISSUER, CLIENT))
    with pytest.raises(IdTokenError, match="'none' is not accepted"):
        verify(token, signing_key)


def test_hs256_with_public_key_as_secret_refused(signing_key: SigningKey) -> None:
    token = hs256_with_public_key(signing_key, id_token_claims(ISSUER, CLIENT))
    with pytest.raises(IdTokenError, match="HS256"):
        verify(token, signing_key)


def test_unknown_critical_header_refused(signing_key: SigningKey) -> None:
    # RFC 7515 4.1.11: "crit" naming an extension the recipient does not know is fatal.
    headers: dict[str, Any] = {"crit": ["exp-ext"], "exp-ext": 1}
    token = signing_key.sign(id_token_claims(ISSUER, CLIENT), **headers)
    with pytest.raises(IdTokenError, match="crit"):
        verify(token, signing_key)


def test_at_hash_binds_the_access_token(signing_key: SigningKey) -> None:
    token = signing_key.sign(id_token_claims(ISSUER, CLIENT), access_token="the-access-token")
    claims = verify_id_token(
        token, signing_key.public_jwk, issuer=ISSUER, client_id=CLIENT, nonce="n-1",
        leeway=0, access_token="the-access-token",
    )  # fmt: skip
    assert "at_hash" in claims
    with pytest.raises(IdTokenError, match="at_hash"):
        verify_id_token(
            token, signing_key.public_jwk, issuer=ISSUER, client_id=CLIENT, nonce="n-1",
            leeway=0, access_token="another-access-token",
        )  # fmt: skip


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_garbage_tokens(signing_key: SigningKey, junk: str) -> None:
    with pytest.raises(IdTokenError):
        verify(junk, signing_key)


def test_truncated_token(signing_key: SigningKey) -> None:
    token = signing_key.sign(id_token_claims(ISSUER, CLIENT))
    with pytest.raises(IdTokenError):
        verify(token[:-10], signing_key)


def test_key_set_selection(signing_key: SigningKey, other_key: SigningKey) -> None:
    keys = KeySet(
        {
            "keys": [
                signing_key.public_jwk,
                other_key.public_jwk,
                {**other_key.public_jwk, "kid": "enc", "use": "enc"},
            ]
        }
    )
    assert keys.find("key-2", "RS256") == other_key.public_jwk
    assert keys.find("enc", "RS256") is None
    assert keys.find("missing", "RS256") is None
    assert keys.find(None, "RS256") is None  # ambiguous without a kid
    assert KeySet({"keys": [signing_key.public_jwk]}).find(None, "RS256") is not None
    assert keys.find("key-1", "ES256") is None
    with pytest.raises(ValueError):
        KeySet({"nokeys": []})
