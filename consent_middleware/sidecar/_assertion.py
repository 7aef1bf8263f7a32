"""The identity assertion for the upstream: a short ES256 JWT any stock library verifies.

The signing key comes from ``CONSENT_ASSERTION_KEY`` (a private JWK or PEM) or, when unset,
is derived from ``AUTH0_SECRET`` with HKDF, so every worker and every restart signs with the
same key and the public half at ``/.well-known/consent-jwks.json`` stays valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from cachetools import LRUCache
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jose import jwk, jwt
from jose.exceptions import JOSEError

from .._exceptions import ConfigurationError

ASSERTION_LIFETIME = 60
RECENT_ASSERTIONS = 10_000
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def _b64(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()


class AssertionSigner:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ConfigurationError("CONSENT_ASSERTION_KEY must be an EC P-256 key (ES256)")
        numbers = private_key.public_key().public_numbers()
        public = {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x), "y": _b64(numbers.y)}
        # RFC 7638: the kid is the key's thumbprint, so it changes exactly when the key does.
        canonical = json.dumps(public, separators=(",", ":"), sort_keys=True).encode()
        kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
        self.public_jwk = {**public, "kid": kid, "alg": "ES256", "use": "sig"}
        self.kid = kid
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._key = jwk.construct(pem.decode(), algorithm="ES256")
        # Recent assertions by what they say; small (a token is under 1 KB), so bounded by count.
        self._recent: LRUCache[tuple[str, str, str], tuple[str, float]] = LRUCache(
            RECENT_ASSERTIONS
        )

    @classmethod
    def from_setting(cls, value: str, secret: str) -> AssertionSigner:
        """From ``CONSENT_ASSERTION_KEY`` (JWK or PEM), else derived from ``AUTH0_SECRET``."""
        value = value.strip()
        if not value:
            return cls(_derived_key(secret))
        try:
            if value.startswith("{"):
                document = json.loads(value)
                pem = jwk.construct(document, algorithm="ES256").to_pem()
                key = serialization.load_pem_private_key(pem, password=None)
            else:
                key = serialization.load_pem_private_key(value.encode(), password=None)
        except (JOSEError, ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(
                "CONSENT_ASSERTION_KEY is not a private EC key as a JWK or PEM"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError("CONSENT_ASSERTION_KEY must be an EC P-256 private key")
        return cls(key)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def sign(self, issuer: str, audience: str, claims: dict[str, Any]) -> str:
        return self.assertion(issuer, audience, claims)[0]

    def assertion(self, issuer: str, audience: str, claims: dict[str, Any]) -> tuple[str, float]:
        """The assertion for these claims and until when (Unix seconds) it may be handed
        out: one signed within the last half of its lifetime is handed out again (an ECDSA
        signature per request costs more than the rest of the gate), so an upstream always
        gets one valid for at least 30 s."""
        key = (issuer, audience, json.dumps(claims, sort_keys=True, separators=(",", ":")))
        now = time.time()
        cached = self._recent.get(key)
        if cached is None or cached[1] - now <= ASSERTION_LIFETIME / 2:
            cached = (self._signed(issuer, audience, claims), now + ASSERTION_LIFETIME)
            self._recent[key] = cached
        return cached[0], cached[1] - ASSERTION_LIFETIME / 2

    def _signed(self, issuer: str, audience: str, claims: dict[str, Any]) -> str:
        now = int(time.time())
        body = {
            **claims,
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        return str(jwt.encode(body, self._key, algorithm="ES256", headers={"kid": self.kid}))


def _derived_key(secret: str) -> ec.EllipticCurvePrivateKey:
    seed = HKDF(
        algorithm=hashes.SHA256(), length=48, salt=b"", info=b"consent_middleware assertion key"
    ).derive(secret.encode("utf-8"))
    # 48 bytes reduced modulo the group order: a uniformly distributed, non-zero scalar.
    scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())
