"""Login transactions: one encrypted ``__txn_{state}`` cookie per login in flight."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.common.security import generate_token

from . import _jose
from ._config import Settings
from ._cookies import CookieWriter

TRANSACTION_PREFIX = "__txn_"
TRANSACTION_LIFETIME = 3600


class Purpose(enum.Enum):
    """Why a login was started."""

    #: The user signs in (a login form may be shown).
    LOGIN = "login"
    #: A ``prompt=none`` round trip to refresh the claims; the user sees no form.
    SILENT = "silent"


class Expectation(enum.Enum):
    """What the new session must show once back, or the flow stops (the loop guard)."""

    #: The current terms accepted.
    CONSENT = "consent"
    #: Consent no longer given.
    WITHDRAWAL = "withdrawal"


@dataclass(frozen=True)
class Transaction:
    """One login in flight, kept in its own cookie so several tabs can log in at once."""

    return_to: str
    purpose: Purpose = Purpose.LOGIN
    expect: Expectation | None = None
    # RFC 6749 10.12 (state), OIDC Core 3.1.2.1 (nonce), RFC 7636 4.1 (verifier).
    state: str = field(default_factory=lambda: generate_token(43))
    nonce: str = field(default_factory=lambda: generate_token(43))
    code_verifier: str = field(default_factory=lambda: generate_token(64))

    def to_payload(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "nonce": self.nonce,
            "codeVerifier": self.code_verifier,
            "responseType": "code",
            "returnTo": self.return_to,
            "purpose": self.purpose.value,
            "expect": self.expect.value if self.expect else None,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Transaction | None:
        """Parse a decrypted payload; None when its shape is not a transaction."""
        try:
            expect = payload.get("expect")
            return cls(
                state=str(payload["state"]),
                nonce=str(payload["nonce"]),
                code_verifier=str(payload["codeVerifier"]),
                return_to=str(payload["returnTo"]),
                purpose=Purpose(payload.get("purpose", Purpose.LOGIN.value)),
                expect=Expectation(expect) if expect else None,
            )
        except (KeyError, ValueError):
            return None


class TransactionStore:
    def __init__(self, settings: Settings) -> None:
        self.keys = [_jose.derive_key(s) for s in settings.secrets]
        self.writer = CookieWriter(secure=settings.secure_cookies)

    def save(self, tx: Transaction) -> bytes:
        expires_at = int(time.time()) + TRANSACTION_LIFETIME
        value = _jose.encrypt(tx.to_payload(), self.keys[0], expires_at)
        return self.writer.set(TRANSACTION_PREFIX + tx.state, value, TRANSACTION_LIFETIME)

    def load(self, state: str, cookies: Mapping[str, str]) -> Transaction | None:
        value = cookies.get(TRANSACTION_PREFIX + state)
        payload = _jose.decrypt(value, self.keys) if value else None
        if not payload or payload.get("state") != state:
            return None
        return Transaction.from_payload(payload)

    def delete(self, state: str) -> bytes:
        return self.writer.delete(TRANSACTION_PREFIX + state)
