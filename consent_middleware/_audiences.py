"""Access tokens for other APIs than the session's own, from the one refresh token.

Auth0's Multi-Resource Refresh Token (MRRT) lets a refresh token be exchanged for a token
for any API its policies name: the refresh_token grant (RFC 6749 §6) with ``audience``.
Other providers take RFC 8707's ``resource`` (§2) for the same thing. The tokens are kept
where nextjs-auth0 v4 keeps them, the session's ``accessTokens`` list, entry for entry in its
shape (``accessTokenSetFromTokenSet``), so a Next.js app reading the same cookie finds them
and we find the ones it stored.

A stored token good for ``min_ttl`` more seconds is returned with no I/O and no cryptography.
A grant runs under the session's grant lock (it spends the same, possibly rotating, refresh
token as every other grant of the session) and concurrent callers for one audience share it.
The cookie stays bounded: the tokens renewed longest ago go first, the session's own token
set never.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from . import _jose
from ._cookies import CHUNK_SIZE, SESSION_COOKIE, chunk_name, chunk_names
from ._exceptions import (
    AccessTokenError,
    AccessTokenErrorCode,
    IdentityProviderError,
    IdTokenError,
    RefreshError,
    TokenEndpointError,
)
from ._refresh import SessionRefresher, check_renewable
from ._session import CookieSessionStore, Session, SessionStore
from ._tokens import still_good

logger = logging.getLogger("consent_middleware")

# In SessionRefresher.refused_audiences: the provider answered with another API's token.
_MISMATCH = ""

#: nextjs-auth0 v4's session field for the tokens of other audiences.
ACCESS_TOKENS = "accessTokens"
#: What browsers and servers reliably accept for a whole ``Cookie`` header.
COOKIE_HEADER_LIMIT = 8 * 1024
#: However small the tokens, no more than this many audiences are kept in one session.
MAX_AUDIENCE_TOKENS = 16
MAX_AUDIENCE_LENGTH = 512


@dataclass(frozen=True)
class AudienceToken:
    """One ``accessTokens`` entry (nextjs-auth0 v4's ``AccessTokenSet``)."""

    access_token: str
    audience: str
    #: Unix seconds; 0 when the provider did not say.
    expires_at: int
    scope: str | None = None
    #: The scope asked for: what nextjs-auth0 matches a later request against.
    requested_scope: str | None = None
    token_type: str | None = None
    #: Unix seconds this server got it; 0 when unknown (nextjs-auth0 wrote the entry).
    issued_at: int = 0

    def expired(self, now: float) -> bool:
        return not self.access_token or 0 < self.expires_at <= now

    def usable(self, min_ttl: float, now: float) -> bool:
        """Good for ``min_ttl`` more seconds, or for half its life when shorter-lived."""
        return still_good(self.access_token, self.expires_at, self.issued_at, min_ttl, now)

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "accessToken": self.access_token,
            "expiresAt": self.expires_at,
            "audience": self.audience,
        }
        for key, value in (
            ("scope", self.scope),
            ("requestedScope", self.requested_scope),
            ("token_type", self.token_type),
            ("issuedAt", self.issued_at),
        ):
            if value:
                entry[key] = value
        return entry

    @classmethod
    def from_entry(cls, entry: object) -> AudienceToken | None:
        if not isinstance(entry, Mapping):
            return None
        token, audience = entry.get("accessToken"), entry.get("audience")
        expires_at, issued_at = entry.get("expiresAt"), entry.get("issuedAt")
        if not (isinstance(token, str) and isinstance(audience, str)):
            return None
        return cls(
            access_token=token,
            audience=audience,
            expires_at=int(expires_at) if isinstance(expires_at, int | float) else 0,
            scope=_text(entry.get("scope")),
            requested_scope=_text(entry.get("requestedScope")),
            token_type=_text(entry.get("token_type")),
            issued_at=int(issued_at) if isinstance(issued_at, int | float) else 0,
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def entries(session: Session) -> list[Any]:
    stored = session.extra.get(ACCESS_TOKENS)
    return list(stored) if isinstance(stored, list) else []


def with_entries(session: Session, kept: list[Any]) -> Session:
    extra = {k: v for k, v in session.extra.items() if k != ACCESS_TOKENS}
    if kept:
        extra[ACCESS_TOKENS] = kept
    return replace(session, extra=extra)


def _covers(stored: str | None, wanted: str | None) -> bool:
    # nextjs-auth0's compareScopes: the stored scope holds every scope asked for.
    return not wanted or set((stored or "").split()) >= set(wanted.split())


def find(session: Session, audience: str, scope: str | None) -> AudienceToken | None:
    """The stored token for ``audience`` whose requested scope covers ``scope`` (the one with
    the fewest scopes, as nextjs-auth0's ``findAccessTokenSet`` picks)."""
    matches = [
        token
        for token in map(AudienceToken.from_entry, entries(session))
        if token is not None
        and token.audience == audience
        and _covers(token.requested_scope or token.scope, scope)
    ]
    return min(matches, key=lambda t: len(set((t.scope or "").split())), default=None)


def stored(session: Session, token: AudienceToken) -> Session:
    """``session`` with ``token`` as the newest entry; one it replaces is dropped."""
    key = (token.audience, token.requested_scope or token.scope)
    kept = []
    for entry in entries(session):
        other = AudienceToken.from_entry(entry)
        if other is None or (other.audience, other.requested_scope or other.scope) != key:
            kept.append(entry)
    return with_entries(session, [*kept, token.to_entry()])


def check_audience(audience: str) -> None:
    if not audience or len(audience) > MAX_AUDIENCE_LENGTH or not audience.isprintable():
        raise AccessTokenError(
            AccessTokenErrorCode.INVALID_AUDIENCE.value,
            f"an audience is a printable identifier of 1 to {MAX_AUDIENCE_LENGTH} characters",
        )


def refresh_failure(exc: RefreshError, audience: str | None = None) -> AccessTokenError:
    """The provider said no (or answered with a token that fails verification): sign in
    again. Anything else is an outage, and the session is left as it was.

    A token for another API (``audience``) is different: only ``invalid_grant`` (RFC 6749
    5.2: the refresh token itself is dead) is cured by a login. Any other refusal would
    come again right after it, and the login, silent at the provider, would loop."""
    cause = exc.__cause__
    if (
        audience is not None
        and isinstance(cause, TokenEndpointError)
        and cause.error != "invalid_grant"
    ):
        logger.warning("the provider refused a token for %r: %s", audience, cause.error or "error")
        return AccessTokenError(
            AccessTokenErrorCode.AUDIENCE_REFUSED.value,
            f"the provider refused a token for {audience!r} ({cause.error})",
        )
    refused = isinstance(cause, TokenEndpointError | IdTokenError)
    code = (
        AccessTokenErrorCode.FAILED_TO_REFRESH_TOKEN
        if refused
        else AccessTokenErrorCode.PROVIDER_UNAVAILABLE
    )
    return AccessTokenError(code.value, str(exc))


def token_audiences(access_token: str) -> list[str] | None:
    """A JWT access token's ``aud`` (RFC 7519 §4.1.3), read without verification: the
    client only checks what it was given, the API verifies. None when not a readable JWT."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    aud = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return aud
    return None


async def parameter_name(refresher: SessionRefresher) -> str:
    endpoint = (await refresher.oidc.metadata()).token_endpoint
    return refresher.settings.audience_parameter_for(endpoint)


def _granted(body: Mapping[str, Any], audience: str, parameter: str) -> bool:
    audiences = token_audiences(str(body["access_token"]))
    if audiences is not None:
        return audience in audiences
    # Not a JWT. Auth0 issues JWTs (RFC 9068) for every API, so an opaque answer is its
    # default, userinfo-only token; an RFC 8707 server audience-restricts what it issues
    # (§2.2) in a format the client need not read.
    return parameter == "resource"


async def _grant(
    refresher: SessionRefresher, session: Session, refresh_token: str, audience: str
) -> Session:
    """One refresh-token grant for ``audience``. The session it returns always carries what
    the grant rotated (RFC 6749 §6: the old refresh token must be discarded); it holds the
    token for ``audience`` only when the provider issued one for it."""
    settings, oidc = refresher.settings, refresher.oidc
    requested_at = time.time()
    try:
        parameter = await parameter_name(refresher)
        if parameter == "resource":
            parts = urlsplit(audience)
            if not parts.scheme or parts.fragment:  # RFC 8707 §2: absolute, no fragment
                raise AccessTokenError(
                    AccessTokenErrorCode.INVALID_AUDIENCE.value,
                    "RFC 8707 resource indicators are absolute URIs without a fragment",
                )
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            parameter: audience,
            "scope": settings.scope,
        }
        body = await oidc._token_request(form, settings.client_id, settings.client_secret)
        id_token = body.get("id_token")
        claims = None
        if isinstance(id_token, str):
            claims = await oidc.verify_id_token(id_token, None)
            if claims["sub"] != session.user.get("sub"):
                raise IdTokenError("the refreshed ID token is for a different user")
    except IdentityProviderError as exc:
        raise RefreshError(f"the refresh-token grant for {audience!r} failed: {exc}") from exc
    token_set = replace(
        session.token_set,
        refresh_token=body.get("refresh_token") or refresh_token,
        id_token=id_token if isinstance(id_token, str) else session.token_set.id_token,
    )
    if claims is not None:
        # The Action ran again: the claims (the consent among them) are as of this grant.
        current = session.refreshed(claims, token_set, int(requested_at * 1000))
    else:
        current = replace(session, token_set=token_set)
    if not _granted(body, audience, parameter):
        return current
    expires_in = body.get("expires_in")
    lifetime = int(expires_in) if isinstance(expires_in, int | float) else None
    token = AudienceToken(
        access_token=str(body["access_token"]),
        audience=audience,
        expires_at=0 if lifetime is None else int(requested_at) + lifetime,
        scope=_text(body.get("scope")),
        requested_scope=settings.scope,
        token_type=_text(body.get("token_type")),
        issued_at=int(requested_at),
    )
    return stored(current, token)


async def audience_token(
    refresher: SessionRefresher,
    session: Session,
    audience: str,
    *,
    refresh: bool,
    min_ttl: float,
    renewable: bool = True,
) -> tuple[Session, AudienceToken]:
    """The session (renewed or not) and its token for ``audience``."""
    check_audience(audience)
    scope = refresher.settings.scope
    found = find(session, audience, scope)
    if found is not None and not refresh and found.usable(min_ttl, time.time()):
        return session, found
    refused = refresher.refused_audiences.get((session.sid, audience))
    if refused == _MISMATCH:
        # Asked again within a minute of the provider's no: the same answer, no grant spent.
        raise AudienceMismatch(session, audience)
    if refused is not None:
        raise AccessTokenError(AccessTokenErrorCode.AUDIENCE_REFUSED.value, refused)
    check_renewable(session, renewable)

    async def grant(current: Session, refresh_token: str) -> Session:
        return await _grant(refresher, current, refresh_token, audience)

    try:
        renewed = await refresher.grants.refresh(session, 0.0, grant, audience=audience)
    except RefreshError as exc:
        failure = refresh_failure(exc, audience)
        if failure.code == AccessTokenErrorCode.AUDIENCE_REFUSED.value:
            refresher.refused_audiences[(session.sid, audience)] = str(failure)
        raise failure from exc
    found = find(renewed, audience, scope)
    if found is None:
        refresher.refused_audiences[(renewed.sid, audience)] = _MISMATCH
        raise AudienceMismatch(renewed, audience)
    return renewed, found


class AudienceMismatch(AccessTokenError):
    """The provider answered with a token for another audience; ``session`` is what the
    grant left (its refresh token rotated), to be stored all the same."""

    def __init__(self, session: Session, audience: str) -> None:
        self.session = session
        super().__init__(
            AccessTokenErrorCode.AUDIENCE_MISMATCH.value,
            f"the provider issued no token for {audience!r} (Auth0: give the application a "
            "Multi-Resource Refresh Token policy for this API)",
        )


def _pairs_length(pairs: list[tuple[str, str]]) -> int:
    return sum(len(name) + 1 + len(value) for name, value in pairs) + 2 * max(len(pairs) - 1, 0)


def cookie_header_length(
    store: CookieSessionStore, session: Session, cookies: Mapping[str, str]
) -> int:
    """The ``Cookie`` header's length once the browser holds ``session`` beside the other
    cookies of this request (``Cookie: `` included)."""
    ours = {SESSION_COOKIE, *chunk_names(SESSION_COOKIE, cookies)}
    others = [(k, v) for k, v in cookies.items() if k not in ours]
    value = _jose.encrypt(session.to_payload(), store.keys[0], int(time.time()))
    if len(value) <= CHUNK_SIZE:
        mine = [(SESSION_COOKIE, value)]
    else:
        parts = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
        mine = [(chunk_name(SESSION_COOKIE, i), part) for i, part in enumerate(parts)]
    return len("Cookie: ") + _pairs_length([*others, *mine])


def bounded(session: Session, store: SessionStore, cookies: Mapping[str, str]) -> Session:
    """``session`` with the fewest other-audience tokens dropped that keeps the ``Cookie``
    header under ``COOKIE_HEADER_LIMIT`` (and at most ``MAX_AUDIENCE_TOKENS``): expired
    ones first, then the ones renewed longest ago (the list's order). The session's own
    token set is never dropped. A store that keeps sessions on the server is not measured:
    its cookie is an id."""
    now = time.time()
    kept = entries(session)
    live = [e for e in kept if (t := AudienceToken.from_entry(e)) and not t.expired(now)]
    if len(live) != len(kept):
        kept = live
    kept = kept[-MAX_AUDIENCE_TOKENS:]
    current = with_entries(session, kept) if kept != entries(session) else session
    if not isinstance(store, CookieSessionStore):
        return current
    while kept and cookie_header_length(store, current, cookies) >= COOKIE_HEADER_LIMIT:
        kept = kept[1:]
        current = with_entries(session, kept)
    return current


async def for_connection(
    connection: HTTPConnection,
    refresher: SessionRefresher,
    session: Session,
    audience: str,
    *,
    refresh: bool,
    min_ttl: float,
    renewable: bool = True,
) -> tuple[Session, AudienceToken]:
    """``audience_token`` with the renewed session bounded for this request's cookies."""
    try:
        renewed, token = await audience_token(
            refresher, session, audience, refresh=refresh, min_ttl=min_ttl, renewable=renewable
        )
    except AudienceMismatch as exc:
        exc.session = bounded(exc.session, refresher.sessions, connection.cookies)
        raise
    if renewed is session:
        return session, token
    return bounded(renewed, refresher.sessions, connection.cookies), token
