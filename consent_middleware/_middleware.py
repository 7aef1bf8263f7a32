"""``ConsentMiddleware``: serves the auth and consent routes and gates everything else."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from urllib.parse import urlsplit

import httpx
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._access import renewal_not_for_age
from ._admission_cache import Admitted
from ._admissions import Admissions
from ._config import Settings
from ._cookies import joined_cookie_header, scope_cookies, session_cookies, sets_session_cookie
from ._engine import Engine
from ._exceptions import AccessTokenError, AccessTokenErrorCode, SharedStateError
from ._gate import (
    Verdict,
    app_path,
    is_public,
    matches,
    matches_every_spelling,
    missing_purposes,
    refusal,
    refusal_body,
    requested_target,
    sent_path,
    wants_json,
)
from ._redirects import origin_of
from ._refresh import (
    REFRESHED_SCOPE_KEY,
    REFRESHER_SCOPE_KEY,
    RESPONSE_STARTED_SCOPE_KEY,
    SESSION_SCOPE_KEY,
    with_cookies,
)
from ._responses import PRIVATE, ROLL_SCOPE_KEY, session_cookie_values, with_vary_cookie
from ._revocation import Revocation
from ._session import SessionStore
from ._state import SharedState

logger = logging.getLogger("consent_middleware")

# An async callable in the scope of gated requests, called with the scope: the Set-Cookie
# values the response gets.
SESSION_COOKIES_SCOPE_KEY = "consent_middleware.session_cookies"
_DENIAL_EXTENSION = "websocket.http.response"


class ConsentMiddleware:
    """Pure ASGI: add it with ``app.add_middleware(ConsentMiddleware, settings=...)``."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        session_store: SessionStore | None = None,
        http_client: httpx.AsyncClient | None = None,
        shared_state: SharedState | None = None,
    ) -> None:
        self.app = app
        # Read settings now, so a bad value stops start-up, not a request.
        self.settings = settings if settings is not None else Settings.from_env()
        self.engine = Engine.create(
            self.settings,
            session_store=session_store,
            http_client=http_client,
            shared_state=shared_state,
        )
        # The gate's decision for a request's session cookies: remembered for those it
        # admitted (a consented user's next request costs a dict lookup), decided from a
        # summary of the session otherwise. Revocation marks are checked on every request,
        # cached or not.
        self._admissions = Admissions(self.settings, self.engine.sessions, self.engine.refresher)
        # What every request let through gets in its scope beside its user (one update):
        # the refresher, and what this response will set (a roll or a refresh) for an app
        # that must pass the new session on before answering (the sidecar forwards it in
        # the Cookie header).
        self._handed = {
            REFRESHER_SCOPE_KEY: self.engine.refresher,
            SESSION_COOKIES_SCOPE_KEY: self._session_cookie_values,
        }
        # Read once: the gate's hot path asks these on every request.
        self._state = self.engine.state
        self._own_prefixes = (self.settings.routes_prefix, self.settings.consent_path)
        self._own_starts = tuple(f"{p}/" for p in self._own_prefixes)
        self._public = bool(self.settings.public_paths)
        self._revalidates = self.settings.revalidate_seconds > 0
        self._started = False
        self._origin = origin_of(self.settings.app_base_url)
        self._mounted_at = urlsplit(self.settings.app_base_url).path.rstrip("/")
        self._root_warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A gated HTTP request is served in this one coroutine, from the cache lookup to
        # the wrapped send: each further coroutine awaited on the way costs about 0.3 µs,
        # a tenth of the gate's whole cost for a known user.
        if scope["type"] != "http" or not self._started:
            await self._other(scope, receive, send)
            return
        path = app_path(scope) if scope.get("root_path") else scope["path"]
        settings = self.settings
        if path in self._own_prefixes or path.startswith(self._own_starts):
            self._check_root(scope)
            joined_cookie_header(scope)
            await self.engine.serve_own_route(scope, receive, send, path)
            return
        if (
            self._public
            and matches(path, settings.public_paths)
            and is_public(path, settings, sent_path(scope))
        ):
            await self.app(scope, receive, send)
            return
        now = time.time()
        admissions = self._admissions
        try:
            raw = joined_cookie_header(scope)
            key = session_cookies(raw)
            admitted = admissions.known(key, now) or await admissions.admit(scope, raw, key, now)
            if not isinstance(admitted, Verdict) and (self._state.has_marks or self._revalidates):
                if self.engine.revocations.status(admitted, now) is not Revocation.NONE:
                    admissions.cache.discard(admitted)
                    fresh = await self._after_revocation(admitted, scope, receive, send)
                    if fresh is None:
                        return
                    admitted = fresh
        except SharedStateError:
            # Sessions or locks live in a store that is away: a clear 503, never a 500.
            as_json = wants_json(path, Headers(scope=scope), settings)
            await self.engine.pages.unavailable(as_json)(scope, receive, send)
            return
        if isinstance(admitted, Verdict):
            await self._refuse(admitted, scope, receive, send)
            return
        if admitted.verdict is not Verdict.ALLOW:
            await self._refuse(admitted.verdict, scope, receive, send)
            return
        if settings.require:
            missing = missing_purposes(path, admitted.purposes, settings, sent_path(scope))
            if missing:
                await self._refusal(Verdict.PURPOSE, scope, missing)(scope, receive, send)
                return

        admissions.hand_over(admitted, scope, raw, key, now)
        scope.update(self._handed)
        roll = admitted.roll
        if roll:
            scope[ROLL_SCOPE_KEY] = True
        started = False

        # Not a coroutine function: it returns the awaitable of the send it wraps (or of
        # the cookie write, rarely), so each message costs the app one await, not two.
        def send_gated(message: Message) -> Awaitable[None]:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                scope[RESPONSE_STARTED_SCOPE_KEY] = True
                # The answer depends on who asks: shared caches must key it by the cookie.
                # Raw header pairs, not a Headers object: this runs on every response.
                message["headers"] = with_vary_cookie(message.get("headers", ()))
                # Nothing to write unless the session rolls or was refreshed meanwhile:
                # most responses skip the call.
                if roll or REFRESHED_SCOPE_KEY in scope:
                    return self._send_with_session(message, scope, send)
            return send(message)

        try:
            await self.app(scope, receive, send_gated)
        except AccessTokenError as exc:
            if started:
                raise
            await self._access_token_error(exc, scope, receive, send)
        finally:
            if admitted.user is not None and not admitted.user_weighed:
                # The route read the user (maybe in a worker thread, maybe before failing):
                # counted here, on the event loop, the only thread that changes the cache.
                admissions.cache.weigh_user(admitted)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything but a gated HTTP request once started: the lifespan, websockets, and
        the first request (which starts following the shared state first)."""
        kind = scope["type"]
        if not self._started and kind != "lifespan":
            await self._start()
        if kind == "http":
            await self(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            if kind == "lifespan":
                receive = self._starting_up(receive)
                send = self._closing_on_shutdown(send)
            await self.app(scope, receive, send)

    async def _start(self) -> None:
        # Follow the shared state (marks from other replicas) before gating anything.
        self._started = True
        await self.engine.start()

    def _starting_up(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not self._started:
                await self._start()
            return message

        return wrapped

    async def _access_token_error(
        self, exc: AccessTokenError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """get_access_token() found no usable token before the app answered: the login
        (401 JSON for API calls), a 503 while the provider is unreachable, a 502 for a
        token issued for another API (whose grant's new session is still written)."""
        as_json = wants_json(app_path(scope), Headers(scope=scope), self.settings)
        fresh = renewal_not_for_age(scope.get(SESSION_SCOPE_KEY), time.time())
        response = self.engine.pages.access_token_error(exc.code, as_json, login_helps=not fresh)
        if response is None:
            response = self._refusal(Verdict.LOGIN, scope)
        elif exc.code == AccessTokenErrorCode.AUDIENCE_MISMATCH.value:
            with contextlib.suppress(SharedStateError):
                with_cookies(response, await self._session_cookie_values(scope))
        await response(scope, receive, send)

    async def _session_cookie_values(self, scope: Scope) -> list[bytes]:
        return await session_cookie_values(self.engine.sessions, scope)

    async def _send_with_session(self, start: Message, scope: Scope, send: Send) -> None:
        """Send the response's start with the session cookies this request sets (a roll,
        or a refresh meanwhile)."""
        headers = start["headers"]
        values: list[bytes] = []
        try:
            values = await self._session_cookie_values(scope)
        except SharedStateError as exc:
            # The store is away: the page still goes out, only the roll (or the refreshed
            # cookie) waits for a later request.
            logger.warning("session not written: %s", exc)
        # RFC 6265 4.1.1: one Set-Cookie per name. An app that set the session itself
        # (nextjs-auth0 rolling the session it was handed) wins.
        if values and not sets_session_cookie(headers):
            headers = [(k, v) for k, v in headers if k != b"cache-control"]
            headers += [(b"set-cookie", value) for value in values]
            headers.append((b"cache-control", PRIVATE))
            start["headers"] = headers
        await send(start)

    def _marks_apply(self) -> bool:
        return self._state.has_marks or self._revalidates

    async def _after_revocation(
        self, admitted: Admitted, scope: Scope, receive: Receive, send: Send
    ) -> Admitted | None:
        """A stale session refreshed and let through, or the answer sent and None."""
        engine = self.engine
        cookies = scope_cookies(scope)
        session = admitted.session or await engine.sessions.load(cookies)
        fresh = await engine.refresher.settle(session) if session is not None else None
        if fresh is None:
            response = self._refusal(Verdict.LOGIN, scope)
            with_cookies(response, await engine.sessions.clear(cookies))
        else:
            after = self._admissions.admission(fresh, fresh, False, time.time())
            if after.verdict is Verdict.ALLOW:
                scope[REFRESHED_SCOPE_KEY] = fresh
                return after
            response = self._refusal(after.verdict, scope)
            with_cookies(response, await engine.sessions.save(fresh, cookies))
        response.headers["cache-control"] = PRIVATE.decode()
        await response(scope, receive, send)
        return None

    def _refusal(self, verdict: Verdict, scope: Scope, purposes: tuple[str, ...] = ()) -> Response:
        self._check_root(scope)
        return_to = requested_target(scope)
        as_json = wants_json(app_path(scope), Headers(scope=scope), self.settings)
        root = scope.get("root_path", "").rstrip("/")
        return refusal(verdict, scope["method"], return_to, as_json, self.settings, root, purposes)

    def _check_root(self, scope: Scope) -> None:
        """Warn once when the server's ``root_path`` is not APP_BASE_URL's path: the gate
        sends browsers below the one, the provider back to the other, and the mismatch
        shows only as a failed callback. Asked where an address is built (a refusal, the
        package's own routes), never on the gate's way to a known user."""
        if self._root_warned:
            return
        root = scope.get("root_path", "").rstrip("/")
        if root != self._mounted_at:
            self._root_warned = True
            logger.warning(
                "the request's root_path %r is not APP_BASE_URL's path %r: sign-in links "
                "and return addresses follow root_path, the provider's callback APP_BASE_URL "
                "(set uvicorn's --root-path, the Mount or FastAPI's root_path to the "
                "prefix APP_BASE_URL ends in)",
                root,
                self._mounted_at,
            )

    async def _refuse(self, verdict: Verdict, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refusal(verdict, scope)(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Websockets get the pages' decision: a refused handshake, never an open socket."""
        path = app_path(scope)
        settings = self.settings
        sent = sent_path(scope)
        if is_public(path, settings, sent) or matches_every_spelling(
            path, settings.ungated_websockets, sent
        ):
            await self.app(scope, receive, send)
            return
        # Cross-site websocket hijacking: browsers send the page's Origin with every
        # handshake and the cookie goes along, so a foreign page must be refused here.
        origin = Headers(scope=scope).get("origin")
        if origin is not None and origin != self._origin:
            await deny_websocket(scope, receive, send, 403, {"error": "forbidden_origin"})
            return
        now = time.time()
        raw = joined_cookie_header(scope)
        key = session_cookies(raw)
        try:
            admitted = await self._admissions.admitted(scope, raw, key, now)
        except SharedStateError:
            body = {"error": "temporarily_unavailable"}
            await deny_websocket(scope, receive, send, 503, body)
            return
        verdict = admitted if isinstance(admitted, Verdict) else admitted.verdict
        if not isinstance(admitted, Verdict) and self._marks_apply():
            status = self.engine.revocations.status(admitted, now)
            # A handshake cannot carry a refreshed cookie reliably: the next page load
            # refreshes (or ends) the session, then the socket may reconnect.
            if status is not Revocation.NONE:
                verdict = Verdict.LOGIN
        missing: tuple[str, ...] = ()
        if not isinstance(admitted, Verdict) and verdict is Verdict.ALLOW and settings.require:
            missing = missing_purposes(path, admitted.purposes, settings, sent)
            verdict = Verdict.PURPOSE if missing else verdict
        if isinstance(admitted, Verdict) or verdict is not Verdict.ALLOW:
            status_code, body = refusal_body(verdict, requested_target(scope), settings, missing)
            await deny_websocket(scope, receive, send, status_code, body)
            return
        self._admissions.hand_over(admitted, scope, raw, key, now)
        try:
            await self.app(scope, receive, send)
        finally:
            self._admissions.cache.weigh_user(admitted)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return wrapped

    async def aclose(self) -> None:
        """Close what the middleware created (done at lifespan shutdown)."""
        await self.engine.aclose()


async def deny_websocket(
    scope: Scope, receive: Receive, send: Send, status: int, body: dict[str, str]
) -> None:
    """Refuse a websocket handshake with ``status`` and ``body`` as JSON."""
    response = JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})
    await answer_handshake(scope, receive, send, response)


async def answer_handshake(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Answer a websocket handshake with an HTTP response instead of opening the socket."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await answer_connect(scope, receive, send, response)


async def answer_connect(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """``answer_handshake`` once its ``websocket.connect`` was received."""
    if _DENIAL_EXTENSION in scope.get("extensions", {}):
        # The ASGI websocket denial-response extension: a real HTTP answer (Starlette's
        # responses send it so for a websocket scope).
        await response(scope, receive, send)
        return
    # Without it, closing before accepting makes the server answer the handshake with 403.
    await send({"type": "websocket.close", "code": 1008})
