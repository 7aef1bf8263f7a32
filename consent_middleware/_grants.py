"""One refresh-token grant per session at a time, across every worker that shares state.

With rotating refresh tokens, two grants that spend the same token cannot both succeed (and
a provider with reuse detection revokes the whole family), so a session's grants take a
lock in the shared state, and each leaves a record of what it spent and what it got:

- a request that arrived while a grant ran (it waited on the lock) takes that grant's
  result, or its failure, instead of spending the token again;
- a request that arrives later holding the token a grant rotated away takes that result for
  ``RECORD_TTL`` (its cookie was sent before the new one reached the browser); after that
  the record is gone and the spent token is refused by the provider (a rotated token
  replayed later is what refresh-token reuse detection exists for);
- a request whose token an earlier grant for another audience rotated continues from the
  token that grant handed out;
- otherwise it makes its own grant. ``not_before`` lets a caller that just changed the
  user's record refuse any result of a grant sent before the change.

Grants for other audiences (Auth0's Multi-Resource Refresh Token) spend the same refresh
token, so they take the same lock; a record is kept per token spent and names the audience
it was for, so a request follows the chain of rotated tokens to the live one and shares only
a grant for its own audience.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import _jose
from ._exceptions import IdTokenError, RefreshError, SharedStateError, TokenEndpointError
from ._session import Session
from ._state import SharedState

logger = logging.getLogger("consent_middleware")

# How long a grant's record is kept: rotated-away tokens are served from it this long.
RECORD_TTL = 30.0
# Rotations a request follows to reach the live token (each a grant within RECORD_TTL).
MAX_FOLLOW = 8

Grant = Callable[[Session, str], Awaitable[Session]]


class Failure(enum.StrEnum):
    """Why a grant failed, as the requests that take its result must learn it: a refusal
    ends the session (or, for another API, is that API's answer), an outage keeps it."""

    REFUSED = "refused"  # the token endpoint's OAuth error (RFC 6749 5.2)
    REJECTED = "rejected"  # an ID token that failed verification
    UNAVAILABLE = "unavailable"  # no answer, or a server error


def failure_of(exc: RefreshError) -> dict[str, str]:
    """What a failed grant's record keeps of ``exc``'s cause."""
    cause = exc.__cause__
    if isinstance(cause, TokenEndpointError):
        return {"kind": Failure.REFUSED, "error": cause.error, "description": cause.description}
    if isinstance(cause, IdTokenError):
        return {"kind": Failure.REJECTED, "reason": cause.reason}
    return {"kind": Failure.UNAVAILABLE}


def failure_cause(failure: dict[str, str]) -> Exception | None:
    """The cause a request that took a failed grant's result raises from: the same error
    the grant met, so it is answered as the grant's own request was."""
    kind = failure.get("kind")
    if kind == Failure.REFUSED:
        return TokenEndpointError(failure.get("error", ""), failure.get("description", ""))
    if kind == Failure.REJECTED:
        return IdTokenError(failure.get("reason", ""))
    return None


@dataclass(frozen=True)
class GrantRecord:
    """What one grant made of one refresh token (stored under the token's digest)."""

    started: float
    finished: float
    rotated: bool
    #: None when the grant failed.
    session: Session | None
    #: The API the grant asked a token for; "" for the session's own token set.
    audience: str = ""
    #: Why it failed (``failure_of``), when it did.
    failure: dict[str, str] | None = None

    def serves(self, audience: str, not_before: float, arrived: float, now: float) -> bool:
        """Whether a request for ``audience`` that arrived at ``arrived`` takes this result."""
        if self.audience != audience or self.started < not_before:
            return False
        if arrived <= self.finished:
            return True  # it was waiting on this very grant
        if self.session is None or now - self.finished >= RECORD_TTL:
            return False
        # A rotated token is dead: its holder must take the result. A caller that named how
        # fresh the claims must be (a second tab folded into an accept) is served by any
        # grant sent after that moment, rotation or not: one grant, not one per tab.
        return self.rotated or not_before > 0

    def successor(self) -> Session | None:
        """The session this grant made, if it rotated the token it spent."""
        return self.session if self.rotated else None


class Grants:
    def __init__(self, state: SharedState, secret: str) -> None:
        self.state = state
        # A key of its own: records hold tokens, sealed like the session cookie itself.
        self.key = _jose.derive_key(secret, info=b"consent_middleware grant record")

    async def refresh(
        self, session: Session, not_before: float, grant: Grant, audience: str = ""
    ) -> Session:
        token = session.token_set.refresh_token
        if not token:
            raise RefreshError("the session holds no refresh token")
        arrived = time.time()
        async with self.state.lock(f"grant:{session.sid}"):
            for _ in range(MAX_FOLLOW):
                record = await self._load(session.sid, token)
                if record is None:
                    break
                if record.serves(audience, not_before, arrived, time.time()):
                    if record.session is None:
                        raise RefreshError(
                            "the refresh-token grant this request waited on failed"
                        ) from failure_cause(record.failure or {})
                    return record.session
                successor = record.successor()
                if successor is None or not successor.token_set.refresh_token:
                    if record.session is not None and record.audience != audience:
                        # Same token, another audience's result: build on it, so the
                        # token it stored is not lost from the cookie this request writes.
                        session = record.session
                    break
                # Our token is dead; what it was traded for is not (yet) what we need.
                session = successor
                token = successor.token_set.refresh_token
            return await self._run(session, token, grant, audience)

    async def _run(self, session: Session, token: str, grant: Grant, audience: str) -> Session:
        started = time.time()
        try:
            refreshed = await grant(session, token)
        except RefreshError as exc:
            failed = GrantRecord(started, time.time(), False, None, audience, failure_of(exc))
            await self._save(session.sid, token, failed)
            raise
        rotated = refreshed.token_set.refresh_token != token
        record = GrantRecord(started, time.time(), rotated, refreshed, audience)
        await self._save(session.sid, token, record)
        return refreshed

    async def _load(self, sid: str, token: str) -> GrantRecord | None:
        blob = await self.state.get_blob(f"grant:{sid}:{_digest(token)}")
        payload = _jose.decrypt(blob.decode("ascii"), [self.key]) if blob else None
        if payload is None:
            return None
        sealed = payload.get("session")
        session = Session.from_payload(sealed) if isinstance(sealed, dict) else None
        return GrantRecord(
            started=float(payload["started"]),
            finished=float(payload["finished"]),
            rotated=bool(payload["rotated"]),
            session=session,
            audience=str(payload.get("audience", "")),
            failure=payload.get("failure"),
        )

    async def _save(self, sid: str, token: str, record: GrantRecord) -> None:
        session = record.session
        payload = {
            "audience": record.audience,
            "started": record.started,
            "finished": record.finished,
            "rotated": record.rotated,
            "failure": record.failure,
            "session": {**session.to_payload(), "exp": session.expires_at} if session else None,
        }
        sealed = _jose.encrypt(payload, self.key, int(time.time() + RECORD_TTL) + 1)
        try:
            key = f"grant:{sid}:{_digest(token)}"
            await self.state.put_blob(key, sealed.encode("ascii"), RECORD_TTL)
        except SharedStateError as exc:
            # The grant is done and its result goes back to this request; other requests
            # for the session merely lose the chance to share it.
            logger.warning("could not record a refresh-token grant: %s", exc)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
