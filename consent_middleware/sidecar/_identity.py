"""The identity the sidecar hands an app: headers, and an assertion signed for it."""

from __future__ import annotations

import json
from typing import Any

from .._config import Settings
from .._models import User
from ._assertion import AssertionSigner


def identity_headers(
    user: User, settings: Settings, signer: AssertionSigner, audience: str
) -> list[tuple[bytes, bytes]]:
    return identity_headers_until(user, settings, signer, audience)[0]


def identity_headers_until(
    user: User, settings: Settings, signer: AssertionSigner, audience: str
) -> tuple[list[tuple[bytes, bytes]], float]:
    """The identity headers for ``user``, and until when (Unix seconds) they may be reused."""
    claims: dict[str, Any] = {"sub": user.sub}
    if user.email:
        claims["email"] = user.email
    consent = user.claims.get(settings.consent_claim)
    if consent is not None:
        claims[settings.consent_claim] = consent
    assertion, reusable_until = signer.assertion(settings.app_base_url, audience, claims)
    headers = [(b"x-auth-request-user", _header_value(user.sub))]
    if user.email:
        headers.append((b"x-auth-request-email", _header_value(user.email)))
    if user.consent is not None and user.consent.version:
        headers.append((b"x-consent-version", _header_value(user.consent.version)))
    headers.append((b"x-consent-assertion", assertion.encode("ascii")))
    return headers, reusable_until


def _header_value(value: str) -> bytes:
    # Header values are latin-1 on the wire; anything else is sent JSON-escaped, never raw.
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        encoded = json.dumps(value).encode("ascii")
    return encoded.replace(b"\r", b"").replace(b"\n", b"")
