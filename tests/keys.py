"""Real RSA/EC keys made at test time (never stored) and tokens signed with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt


@dataclass
class SigningKey:
    kid: str
    private_pem: bytes
    public_pem: bytes
    public_jwk: dict[str, Any]

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_jwk = jwk.construct(public_pem, "RS256").to_dict()
        public_jwk.update(kid=kid, use="sig", alg="RS256")
        return cls(kid, private_pem, public_pem, public_jwk)

    def sign(self, claims: dict[str, Any], access_token: str | None = None, **headers: Any) -> str:
        """RS256; with ``access_token`` the token carries its ``at_hash``."""
        headers.setdefault("kid", self.kid)
        return str(
            jwt.encode(
                claims,
                self.private_pem,
                algorithm="RS256",
                headers=headers,
                access_token=access_token,
            )
        )


def id_token_claims(
    issuer: str, client_id: str, nonce: str | None = "n-1", **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client_id,
        "sub": "auth0|user1",
        "iat": now,
        "exp": now + 600,
        "email": "user@example.com",
    }
    if nonce is not None:
        claims["nonce"] = nonce
    claims.update(extra)
    return claims


def b64json(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], kid: str = "key-1") -> str:
    """An ``alg: none`` token: no signature at all."""
    return f"{b64json({'alg': 'none', 'kid': kid})}.{b64json(claims)}."


def hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HMAC keyed with the published public key.
    Built by hand because JOSE libraries rightly refuse to sign this way."""
    signing_input = f"{b64json({'alg': 'HS256', 'kid': key.kid})}.{b64json(claims)}"
    mac = hmac.new(key.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
