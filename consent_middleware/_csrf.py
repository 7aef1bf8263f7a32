"""CSRF protection for the consent forms: a per-session token plus an origin check."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from ._jose import derive_key
from ._redirects import origin_of
from ._session import Session


class CSRF:
    def __init__(self, secret: str, app_base_url: str) -> None:
        # A key of its own, so a CSRF token reveals nothing about the cookie key.
        self.key = derive_key(secret, info=b"consent_middleware CSRF")
        self.origin = origin_of(app_base_url)

    def token(self, session: Session) -> str:
        """Bound to the session id: stateless, and useless with any other session."""
        return hmac.new(self.key, session.sid.encode(), hashlib.sha256).hexdigest()

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is not None:
            return origin == self.origin
        referer = request.headers.get("referer")
        if referer is not None:
            return origin_of(referer) == self.origin
        # Browsers send Origin on every cross-site POST; a form with neither is refused.
        return False

    def check(self, request: Request, session: Session, submitted: object) -> bool:
        if not self.same_origin(request) or not isinstance(submitted, str):
            return False
        # Bytes, not str: compare_digest refuses non-ASCII text with a TypeError (a 500).
        return hmac.compare_digest(submitted.encode("utf-8"), self.token(session).encode())
