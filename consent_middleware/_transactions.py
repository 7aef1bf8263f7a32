"""Login transactions: one encrypted cookie per login in flight, bound to the browser that
started it.

Under https the cookies are ``__Host-txn_{state}`` and ``__Host-login_binding``; on http
loopback development they are ``__txn_{state}`` (nextjs-auth0 v4's name) and
``__login_binding``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.common.security import generate_token

from . import _jose
from ._config import Settings
from ._cookies import CookieWriter
from ._redirects import bounded_return_to

logger = logging.getLogger("consent_middleware")

# Long enough to sign in, short enough that an abandoned login's cookie soon goes away.
TRANSACTION_LIFETIME = 600
# Logins in flight per browser, and the bytes of ``Cookie`` header their cookies may take
# together. Each start adds a cookie (about 0.7 KB, 2 KB with a 1 KB return address) and
# every cookie travels in every request, so without a bound a page that makes a browser
# start logins over and over grows its Cookie header past the 8 KB proxies accept, and the
# site answers that browser 400 until the cookies expire. 4 KB leaves room for a full
# session chunk (3.5 KB) beside them.
MAX_TRANSACTIONS = 3
TRANSACTION_COOKIE_BUDGET = 4096
# RFC 6265bis 4.1.3.2: a browser stores a "__Host-" cookie only when it comes from a secure
# origin with Secure, Path=/ and no Domain, so neither a sibling subdomain nor a plain-http
# man in the middle can plant one. Plain http (loopback development) has no such prefix.
HOST_PREFIX = "__Host-"
# What generate_token makes; anything else in a binding cookie was not set by us.
_BINDING_SHAPE = re.compile(r"[A-Za-z0-9]{43}")


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


def binding_digest(binding: str) -> str:
    """The digest of a browser's binding value that a transaction carries (base64url)."""
    digest = hashlib.sha256(binding.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def header_bytes(name: str, value: str) -> int:
    """What one cookie adds to a ``Cookie`` header: ``name=value; ``."""
    return len(name) + 1 + len(value) + 2


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
    # SHA-256 of the binding cookie of the browser that started the login: RFC 6749 10.12
    # asks to bind the callback to the user agent, and a transaction cookie planted in or
    # copied to another browser must not sign that browser in.
    binding_sha256: str = ""
    # Unix seconds; orders a browser's transactions, so the oldest go first.
    created_at: float = field(default_factory=time.time)

    def to_payload(self) -> dict[str, Any]:
        # nextjs-auth0 v4's fields first; ours beside them.
        return {
            "state": self.state,
            "nonce": self.nonce,
            "codeVerifier": self.code_verifier,
            "responseType": "code",
            "returnTo": self.return_to,
            "purpose": self.purpose.value,
            "expect": self.expect.value if self.expect else None,
            "bindingSha256": self.binding_sha256,
            "createdAt": self.created_at,
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
                binding_sha256=str(payload.get("bindingSha256") or ""),
                created_at=float(payload.get("createdAt") or 0),
            )
        except (KeyError, ValueError, TypeError):
            return None


class TransactionStore:
    def __init__(self, settings: Settings) -> None:
        self.keys = [_jose.derive_key(s) for s in settings.secrets]
        self.writer = CookieWriter(secure=settings.secure_cookies)
        prefix = HOST_PREFIX if settings.secure_cookies else "__"
        self.transaction_prefix = prefix + "txn_"
        self.binding_cookie = prefix + "login_binding"

    def cookie_name(self, state: str) -> str:
        return self.transaction_prefix + state

    def begin(
        self,
        return_to: str,
        cookies: Mapping[str, str],
        purpose: Purpose = Purpose.LOGIN,
        expect: Expectation | None = None,
    ) -> tuple[Transaction, list[bytes]]:
        """A new transaction for the browser that sent ``cookies``, and the ``Set-Cookie``
        values that store it: its own cookie, the browser's binding (kept, or made now, and
        renewed so it outlives the transaction), and the deletions that make room for it."""
        binding = cookies.get(self.binding_cookie, "")
        if not _BINDING_SHAPE.fullmatch(binding):
            binding = generate_token(43)
        tx = Transaction(
            bounded_return_to(return_to), purpose, expect, binding_sha256=binding_digest(binding)
        )
        name = self.cookie_name(tx.state)
        value = _jose.encrypt(
            tx.to_payload(), self.keys[0], int(tx.created_at) + TRANSACTION_LIFETIME
        )
        evicted = self._evicted(cookies, header_bytes(name, value))
        return tx, [
            self.writer.set(name, value, TRANSACTION_LIFETIME),
            self.writer.set(self.binding_cookie, binding, TRANSACTION_LIFETIME),
            *(self.writer.delete(old) for old in evicted),
        ]

    def _evicted(self, cookies: Mapping[str, str], new_bytes: int) -> list[str]:
        """The transaction cookies to delete so that a new one of ``new_bytes`` fits: each
        that no longer decrypts (expired, tampered, an old secret's), and the live ones
        from the newest that would pass ``MAX_TRANSACTIONS`` or
        ``TRANSACTION_COOKIE_BUDGET`` down to the oldest."""
        dead: list[str] = []
        live: list[tuple[float, str]] = []
        for name, value in cookies.items():
            if not name.startswith(self.transaction_prefix):
                continue
            payload = _jose.decrypt(value, self.keys)
            tx = Transaction.from_payload(payload) if payload else None
            if tx is None:
                dead.append(name)
            else:
                live.append((tx.created_at, name))
        newest_first = [name for _, name in sorted(live, reverse=True)]
        count, used = 1, new_bytes
        for index, name in enumerate(newest_first):
            count, used = count + 1, used + header_bytes(name, cookies[name])
            if count > MAX_TRANSACTIONS or used > TRANSACTION_COOKIE_BUDGET:
                return dead + newest_first[index:]
        return dead

    def load(self, state: str, cookies: Mapping[str, str]) -> Transaction | None:
        """The transaction for ``state``, if this browser started it; None otherwise."""
        value = cookies.get(self.cookie_name(state))
        payload = _jose.decrypt(value, self.keys) if value else None
        if not payload or payload.get("state") != state:
            return None
        tx = Transaction.from_payload(payload)
        if tx is None:
            return None
        binding = cookies.get(self.binding_cookie, "")
        # Constant time over bytes: compare_digest refuses non-ASCII str.
        if not binding or not hmac.compare_digest(
            binding_digest(binding).encode(), tx.binding_sha256.encode("utf-8")
        ):
            logger.warning("a login transaction came back in a browser that did not start it")
            return None
        return tx

    def delete(self, state: str) -> bytes:
        return self.writer.delete(self.cookie_name(state))
