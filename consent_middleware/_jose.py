"""Everything JOSE lives here, so the JOSE library could be swapped in one place.

Two jobs: the session and transaction cookies (JWE compact, ``dir`` + ``A256GCM``, the
key derived from ``AUTH0_SECRET`` exactly as nextjs-auth0 v4 does) and ID-token
verification (JWS against the provider's JWKS).
"""

from __future__ import annotations

import binascii
import functools
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jose import jwe, jwt
from jose.constants import ALGORITHMS
from jose.exceptions import ExpiredSignatureError, JOSEError, JWSError, JWTClaimsError, JWTError

from ._exceptions import IdTokenError

# nextjs-auth0 v4 tolerates this much clock skew when it reads its own cookies.
COOKIE_CLOCK_SKEW = 15
# Asymmetric algorithms only: "none" and HMAC (which would let a public key act as a
# shared secret) are never accepted for ID tokens.
ID_TOKEN_ALGORITHMS = frozenset(ALGORITHMS.RSA_DS | ALGORITHMS.EC_DS)


def derive_key(secret: str, info: bytes = b"JWE CEK") -> bytes:
    """HKDF-SHA256(secret, salt="", info, 32 bytes); the default info is nextjs-auth0 v4's."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=info).derive(
        secret.encode("utf-8")
    )


def encrypt(payload: Mapping[str, Any], key: bytes, expires_at: int) -> str:
    """Encrypt ``payload`` plus ``exp`` into a JWE compact string."""
    claims = {**payload, "exp": int(expires_at)}
    plaintext = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    token: bytes = jwe.encrypt(plaintext, key, encryption="A256GCM", algorithm="dir")
    return token.decode("ascii")


def decrypt(
    token: str | bytes, keys: Iterable[bytes], now: float | None = None
) -> dict[str, Any] | None:
    """Return the payload, or None when the value is foreign, tampered, truncated or expired.
    ``token`` as the cookie carries it: text, or its bytes straight off the request."""
    now = time.time() if now is None else now
    plaintext = _dir_a256gcm_plaintext(token, keys)
    if plaintext is _NOT_DIR_A256GCM:
        plaintext = _jose_plaintext(token, keys)
    if plaintext is None:
        return None
    try:
        # orjson: 1.3 µs for a 2 KB session against the json module's 5 µs, paid on
        # every cookie the gate has not seen recently.
        claims = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        return None
    if type(claims) is not dict:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + COOKIE_CLOCK_SKEW < now:
        return None
    return claims


def _jose_plaintext(token: str | bytes, keys: Iterable[bytes]) -> bytes | None:
    for key in keys:
        try:
            plaintext: bytes = jwe.decrypt(token, key)
            return plaintext
        except (JOSEError, ValueError, TypeError, KeyError, IndexError, binascii.Error):
            # Any malformed or foreign value simply means "not ours": try the next key.
            continue
    return None


# The cookie's own JWE shape, "dir" + "A256GCM" (what this package and nextjs-auth0 v4
# write), is opened with cryptography's AES-GCM directly, from the cookie's bytes:
# python-jose's general decrypt measured 24 µs per 3 KB session cookie here, this 5 µs
# with the JSON (AES-GCM 0.8, base64 1.3, JSON 1.3), and the gate pays it for every user
# it has not seen recently (issue 10's many-users bench). Anything else (another algorithm, "zip",
# "crit", more header fields) goes to python-jose, which decides.
_DIR_A256GCM = {"alg": "dir", "enc": "A256GCM"}
_header_verdicts: dict[bytes, bool] = {}
# RFC 7515 2: base64url is base64 with "-" and "_" for "+" and "/".
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"===", b"==", b"=")
_IV_BYTES = 12  # RFC 7518 5.3: a 96-bit IV
_TAG_BYTES = 16  # and a 128-bit tag


# What ``_dir_a256gcm_plaintext`` answers for a value of another shape.
_NOT_DIR_A256GCM = b"\x00not dir+A256GCM"


def _dir_a256gcm_plaintext(token: str | bytes, keys: Iterable[bytes]) -> bytes | None:
    """RFC 7516 5.2 for "header..iv.ciphertext.tag" (alg "dir" has no encrypted key) whose
    header is exactly dir + A256GCM: the AAD is the protected header as sent (ASCII), the
    96-bit IV and 128-bit tag as A256GCM defines them (RFC 7518 5.3). None when it does
    not open; ``_NOT_DIR_A256GCM`` for a value of any other shape. The parts are found
    with ``find``: a split of a 3 KB cookie costs twice as much."""
    if isinstance(token, str):
        if not token.isascii():
            return None  # base64url and its dots are ASCII: no JWE of any kind
        token = token.encode("ascii")
    first = token.find(b".")
    if first < 0 or token[first + 1 : first + 2] != b".":
        return _NOT_DIR_A256GCM
    third = token.find(b".", first + 2)
    fourth = token.find(b".", third + 1) if third >= 0 else -1
    header = token[:first]
    if fourth < 0 or not _is_dir_a256gcm(header):
        return _NOT_DIR_A256GCM
    # RFC 7515 2: the segments are unpadded. A "=" inside one would let its bytes end
    # early and move the boundary between ciphertext and tag (the same bytes for AES-GCM,
    # another spelling of the cookie): refused, and each part's length checked decoded.
    if b"=" in token:
        return None
    try:
        iv = _b64url_short(token[first + 2 : third])
        tag = _b64url_short(token[fourth + 1 :])
        ciphertext = _b64url(token[third + 1 : fourth]) + tag
    except (ValueError, binascii.Error):
        return None
    if len(iv) != _IV_BYTES or len(tag) != _TAG_BYTES:
        return None
    for key in keys:
        if len(key) != 32:
            continue
        try:
            return _aead(key).decrypt(iv, ciphertext, header)
        except InvalidTag:
            continue  # another key, or not ours
    return None


def _is_dir_a256gcm(segment: bytes) -> bool:
    verdict = _header_verdicts.get(segment)
    if verdict is None:
        try:
            verdict = json.loads(_b64url(segment)) == _DIR_A256GCM
        except (ValueError, binascii.Error):
            verdict = False
        if len(_header_verdicts) < 64:  # a handful of spellings exist; never grow unbounded
            _header_verdicts[segment] = verdict
    return verdict


def _b64url(segment: bytes) -> bytes:
    """RFC 7515 2: base64url. Characters outside the alphabet are refused; a few
    re-spellings of the same bytes ("+" for "-", unused trailing bits) are not, which is
    harmless: the bytes are what AES-GCM authenticates. pybase64's SIMD decoder:
    0.8 µs for a 3 KB cookie's ciphertext where the standard library's takes several."""
    return pybase64.b64decode(segment + b"=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def _b64url_short(segment: bytes) -> bytes:
    """``_b64url`` for a few characters (the IV, the tag): the standard library's decoder
    in strict mode, a quarter of pybase64's cost per call at this size."""
    padding = _PADDING[len(segment) % 4]
    return binascii.a2b_base64((segment + padding).translate(_TO_STANDARD), strict_mode=True)


@functools.lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except (JOSEError, ValueError, TypeError) as exc:
        raise IdTokenError("the ID token is not a well-formed JWT") from exc
    if not isinstance(header, dict):
        raise IdTokenError("the ID token is not a well-formed JWT")
    return header


def accepted_algorithm(header: Mapping[str, Any]) -> str:
    """The header's ``alg`` if it may sign an ID token; raises IdTokenError otherwise."""
    alg = header.get("alg")
    if alg not in ID_TOKEN_ALGORITHMS:
        raise IdTokenError(f"the ID token algorithm {alg!r} is not accepted")
    # RFC 7515 4.1.11: a recipient must reject a JWS whose "crit" names an extension it does
    # not understand. This package understands none, so any "crit" is refused.
    if "crit" in header:
        raise IdTokenError("the ID token's header names critical extensions (crit)")
    return str(alg)


class KeySet:
    """The provider's signing keys by ``kid`` (keys meant for encryption are left out)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ValueError("JWKS has no 'keys' array")
        self.keys: list[dict[str, Any]] = [
            key
            for key in keys
            if isinstance(key, dict) and key.get("use", "sig") == "sig" and "kty" in key
        ]

    def find(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        candidates = [key for key in self.keys if key.get("alg", alg) == alg]
        if kid is not None:
            candidates = [key for key in candidates if key.get("kid") == kid]
        elif len(candidates) != 1:
            # Without a kid only an unambiguous single key may be used.
            return None
        return candidates[0] if candidates else None


def _decoded(
    token: str,
    key: Mapping[str, Any],
    what: str,
    issuer: str,
    client_id: str,
    leeway: int,
    options: dict[str, bool],
    access_token: str | None = None,
) -> dict[str, Any]:
    """The signed token's claims once signature, ``iss``, ``aud``, ``iat`` and ``exp`` hold;
    ``IdTokenError`` naming what failed otherwise."""
    alg = accepted_algorithm(unverified_header(token))
    required = {"require_iat": True, "require_iss": True, "require_aud": True}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            dict(key),
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            access_token=access_token,
            options={"leeway": leeway, **required, **options},
        )
    except ExpiredSignatureError as exc:
        raise IdTokenError(f"the {what} has expired") from exc
    except JWTClaimsError as exc:
        raise IdTokenError(f"the {what}'s claims are invalid ({exc})") from exc
    except JWTError as exc:
        # python-jose wraps a failed signature (JWSError) in JWTError, and reports a
        # missing required claim with a bare JWTError.
        if exc.args and isinstance(exc.args[0], JWSError):
            raise IdTokenError(f"the {what}'s signature does not verify") from exc
        raise IdTokenError(f"the {what}'s claims are invalid ({exc})") from exc
    except (JOSEError, ValueError, TypeError) as exc:
        raise IdTokenError(f"the {what}'s signature does not verify") from exc
    return claims


def verify_id_token(
    token: str,
    key: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    leeway: int,
    access_token: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify signature and claims (OIDC Core 3.1.3.7); return the claims.

    ``access_token``, when given, is checked against the token's ``at_hash`` if it has one
    (OIDC Core 3.1.3.8 / 3.2.2.9: optional for the code flow, but binding when present).
    """
    options = {
        "require_exp": True,
        "require_sub": True,
        "verify_at_hash": access_token is not None,
    }
    claims = _decoded(token, key, "ID token", issuer, client_id, leeway, options, access_token)
    now = time.time() if now is None else now
    iat = claims["iat"]
    if not isinstance(iat, int | float) or iat > now + leeway:
        raise IdTokenError("the ID token was issued in the future (check the clocks)")
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != client_id:
        raise IdTokenError("the ID token's authorized party (azp) is not this client")
    if nonce is not None and claims.get("nonce") != nonce:
        raise IdTokenError("the ID token's nonce does not match this login")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise IdTokenError("the ID token has no subject")
    return claims


# OIDC Back-Channel Logout 1.0, 2.4: the event a logout token must carry.
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def verify_id_token_signature(
    token: str, key: Mapping[str, Any], *, issuer: str, client_id: str
) -> dict[str, Any]:
    """An ID token kept in a session, re-read: signature, ``iss`` and ``aud`` verified, its
    ``exp`` not (the session's own lifetime governs how long it is good for)."""
    options = {"verify_exp": False, "require_exp": False, "verify_at_hash": False}
    return _decoded(token, key, "ID token", issuer, client_id, 0, options)


def verify_logout_token(
    token: str,
    key: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    leeway: int,
    max_age: int,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a logout token (Back-Channel Logout 1.0, 2.6); return its claims."""
    # 2.4: exp is recommended, not required; when present it is checked.
    options = {"require_exp": False, "verify_at_hash": False}
    claims = _decoded(token, key, "logout token", issuer, client_id, leeway, options)
    now = time.time() if now is None else now
    iat = claims["iat"]
    if not isinstance(iat, int | float) or iat > now + leeway or iat < now - max_age:
        raise IdTokenError("the logout token was not issued just now (check the clocks)")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise IdTokenError("the logout token carries no back-channel logout event")
    if "nonce" in claims:
        raise IdTokenError("a logout token must not carry a nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
        raise IdTokenError("the logout token names neither a session (sid) nor a user (sub)")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise IdTokenError("the logout token has no jti")
    return claims
