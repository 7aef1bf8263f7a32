"""The sidecar: the consent gate in front of an app in any language.

Two ways to use it, together or apart:

- **reverse proxy** (``CONSENT_UPSTREAM``): every request passes the gate, then goes to the
  upstream with the user's identity in headers and a signed assertion;
- **forward-auth** (``GET /auth/check``): a proxy in front (nginx ``auth_request``, Caddy
  ``forward_auth``, Traefik ``forwardAuth``, Envoy ``ext_authz``) asks before it forwards.

Both use the one engine the middleware uses (``Engine.create``), through the middleware.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import unquote

from cachetools import LRUCache
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .._access import DEFAULT_MIN_TTL, get_access_token, usable
from .._admissions import USER_SCOPE_KEY
from .._config import Settings
from .._cookies import (
    has_padded_session_name,
    joined_cookie_header,
)
from .._exceptions import IdentityProviderError, SharedStateError
from .._gate import (
    Verdict,
    app_path,
    is_own_route,
    is_public,
    judged,
    matches_every_spelling,
    missing_purposes,
    refusal_body,
    refusal_json,
    refusal_url,
    requested_target,
    wants_json,
)
from .._middleware import (
    SESSION_COOKIES_SCOPE_KEY,
    ConsentMiddleware,
    answer_handshake,
    deny_websocket,
)
from .._models import NO_PURPOSES, User
from .._pages import NO_STORE
from .._redirects import origin_of
from .._refresh import admitted_session, with_cookies
from ._assertion import RECENT_ASSERTIONS, AssertionSigner
from ._headers import forwarded_headers
from ._identity import identity_headers, identity_headers_until
from ._options import SidecarOptions
from ._proxy import Upstream
from ._requests import (
    has_ambiguous_framing,
    is_origin_form,
    is_preflight,
    is_websocket_handshake,
    original_request,
)
from ._upstream_cookies import as_admitted, with_new_session, with_session_pairs

logger = logging.getLogger("consent_middleware.sidecar")

JWKS_PATH = "/.well-known/consent-jwks.json"
PEER_SCOPE_KEY = "consent_middleware.peer"


class Sidecar:
    """The ASGI app ``consent-sidecar`` serves."""

    def __init__(
        self,
        settings: Settings,
        options: SidecarOptions,
    ) -> None:
        self.settings = settings
        self.options = options
        self.signer = AssertionSigner.from_setting(options.assertion_key, settings.secret)
        self.gate = ConsentMiddleware(self._upstream_app, settings=settings)
        self.engine = self.gate.engine
        self.upstream: Upstream | None = None
        if options.upstream:
            self.upstream = Upstream(options.upstream, options.upstream_timeout, self._error_page)
        self.check_path = f"{settings.routes_prefix}/check"
        self._app_origin = origin_of(settings.app_base_url)
        self._identities: LRUCache[int, tuple[User, str, float, tuple[tuple[bytes, bytes], ...]]]
        self._identities = LRUCache(RECENT_ASSERTIONS)
        trusted = list(options.trusted_proxies)
        # uvicorn's own X-Forwarded-* handling, for the peers listed and no others.
        # Typed loosely: uvicorn annotates its middleware with its own scope types.
        dispatch: Any = self._dispatch
        self._trusted: Any = ProxyHeadersMiddleware(dispatch, trusted_hosts=trusted or [])
        self._trusted_hosts = self._trusted.trusted_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if not is_origin_form(scope):
                await self._bad_request(scope, receive, send, "the request target is no path")
                return
            if has_ambiguous_framing(scope):
                told = "the body's length is told two ways (Content-Length, Transfer-Encoding)"
                await self._bad_request(scope, receive, send, told)
                return
            # Who really connected, before X-Forwarded-For (from a trusted proxy) replaces it.
            scope[PEER_SCOPE_KEY] = scope.get("client")
        await self._trusted(scope, receive, send)

    async def _bad_request(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        """A 400 for what no proxy may pass on: a request target that is not a path ("*",
        "http://host/x", "@host/x", which appended to the upstream's address names another
        host), or a body whose length is told two ways."""
        body = {"error": "invalid_request", "error_description": why}
        if scope["type"] == "websocket":
            await deny_websocket(scope, receive, send, 400, body)
        else:
            await JSONResponse(body, 400, headers=NO_STORE)(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/ping":
                await Response("ok", media_type="text/plain", headers=NO_STORE)(
                    scope, receive, send
                )
                return
            if path == "/ready":
                await (await self._ready())(scope, receive, send)
                return
            if path == JWKS_PATH:
                jwks = JSONResponse(self.signer.jwks(), headers={"cache-control": "max-age=300"})
                await jwks(scope, receive, send)
                return
            if self._is_check(path):
                await (await self._check(Request(scope, receive)))(scope, receive, send)
                return
            if (
                self.options.skip_preflight
                and is_preflight(scope["method"], Headers(scope=scope))
                and not is_own_route(app_path(scope), self.settings)
            ):
                await self._upstream_app(scope, receive, send)  # no user: no identity
                return
        elif scope["type"] == "websocket" and self._is_check(scope["path"]):
            # A proxy that passes the original handshake's Upgrade on to the check (Caddy's
            # forward_auth does): the server hands it over as a websocket. Answered in HTTP
            # all the same, as the proxy asked.
            request = Request({**scope, "type": "http", "method": "GET"}, receive)
            await answer_handshake(scope, receive, send, await self._check(request))
            return
        await self.gate(scope, receive, send)

    def _is_check(self, path: str) -> bool:
        return path == self.check_path or path.startswith(self.check_path + "/")

    async def _ready(self) -> Response:
        # Once loaded, ready at once: a probe must not wait on the provider (nor fail with
        # it, while the users already signed in are served without it).
        if self.engine.oidc.has_metadata:
            return JSONResponse({"ready": True}, headers=NO_STORE)
        try:
            await self.engine.oidc.metadata()
        except IdentityProviderError as exc:
            return JSONResponse({"ready": False, "reason": str(exc)}, 503, headers=NO_STORE)
        return JSONResponse({"ready": True}, headers=NO_STORE)

    def _error_page(self, status: int, scope: Scope) -> Response:
        """The upstream's failure as the client can read it: a page, or for an API call
        or fetch the JSON it expects (as the gate's own refusals)."""
        if status == 504:
            title, message = "Upstream timeout", "The application took too long to answer."
            error = "upstream_timeout"
        else:
            title, message = "Upstream unavailable", "The application could not be reached."
            error = "upstream_unavailable"
        message += " Please try again in a moment."
        if wants_json(app_path(scope), Headers(scope=scope), self.settings):
            return self.engine.pages.json_error(error, status, error_description=message)
        return self.engine.pages.error(title, message, status)

    def _identity(self, scope: Scope, audience: str) -> list[tuple[bytes, bytes]]:
        user = scope.get(USER_SCOPE_KEY)
        if not isinstance(user, User):
            return []
        # The gate hands every request of a cached admission the same User once its
        # claims were read (here, on the first request, whose own user object is another:
        # its headers are built twice): they are built (claims serialised, the assertion
        # looked up) once per half-lifetime of the assertion, not on each request. This
        # cache holds the User, so its id cannot be reused by another object while cached.
        now = time.time()
        entry = self._identities.get(id(user))
        if entry is not None and entry[0] is user and entry[1] == audience and entry[2] > now:
            return list(entry[3])
        headers, until = identity_headers_until(user, self.settings, self.signer, audience)
        self._identities[id(user)] = (user, audience, until, tuple(headers))
        return headers

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # The gate answers for itself (it closes the engine's client at shutdown); this
        # closes the upstream's.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.upstream is not None:
                    await self.upstream.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _upstream_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Behind the gate: the upstream, with identity and the session as it now is."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.upstream is None:
            await Response("Not found", 404, media_type="text/plain")(scope, receive, send)
            return
        identity = self._identity(scope, self.upstream.origin)
        if self.options.pass_access_token and identity:
            token = await self._access_token(scope)
            if token is None:
                status, body = refusal_body(Verdict.LOGIN, requested_target(scope), self.settings)
                await deny_websocket(scope, receive, send, status, body)
                return
            identity.append((b"x-forwarded-access-token", token.encode("latin-1")))
        headers = forwarded_headers(scope, self._peer_trusted(scope), identity)
        pending = scope.get(SESSION_COOKIES_SCOPE_KEY)
        written: list[bytes] = []
        if pending is not None:
            # A roll or refresh during the gate: the upstream reads the session it will
            # write back (a Next.js app rolling the stale one would undo the refresh).
            with contextlib.suppress(SharedStateError):
                # The store is away: the request goes on with the cookie it came with.
                written = await pending(scope)
        if written:
            headers = with_new_session(headers, written)
        elif admitted := as_admitted(joined_cookie_header(scope)):
            headers = with_session_pairs(headers, admitted)
        if scope["type"] == "websocket":
            await self.upstream.websocket(scope, receive, send, headers)
        else:
            await self.upstream.http(scope, receive, send, headers)

    async def _access_token(self, scope: Scope) -> str | None:
        """The user's access token for the upstream. For a request, renewed first when
        about to run out (the renewed session then goes to the browser and the upstream as
        usual; an AccessTokenError is answered by the gate like one from app code: the
        login, or a 503). A websocket handshake cannot carry a renewed session (nor the
        refresh token a renewal rotates) back to the browser: its token goes along while
        still good, else None, and the next page load renews it."""
        if scope["type"] == "http":
            return (await get_access_token(HTTPConnection(scope))).token
        session = await admitted_session(scope)
        if session is None or not usable(session, DEFAULT_MIN_TTL, time.time()):
            return None
        return session.token_set.access_token

    def _peer_trusted(self, scope: Scope) -> bool:
        peer = scope.get(PEER_SCOPE_KEY)
        return peer is not None and peer[0] in self._trusted_hosts

    async def _check(self, request: Request) -> Response:
        """Forward-auth: the gate's decision about the request the proxy is holding."""
        original = original_request(request, self.check_path)
        if isinstance(original, Response):
            return original
        method, target, origin = original
        held = joined_cookie_header(request.scope)
        admitted = as_admitted(held)
        if admitted and has_padded_session_name(held):
            # A name no browser sends (browsers strip cookie names), read as the session by
            # this gate and as another cookie by the app's parser: the proxy may not hand
            # the app the session the gate admitted (Traefik and Envoy cannot).
            body = {"error": "invalid_request", "error_description": "a session cookie's "
                    "name is padded with spaces"}  # fmt: skip
            return JSONResponse(body, status_code=400, headers=NO_STORE)
        # The method a proxy reports is the client's own word unless the proxy set it:
        # only a trusted proxy's (or Envoy's, on the check itself) lets a preflight by.
        vouched = request.method == method or self._peer_trusted(request.scope)
        if self.options.skip_preflight and vouched and is_preflight(method, request.headers):
            return Response(status_code=200, headers=NO_STORE)
        # The path as the proxy will route it and the app may read it: never urlsplit on a
        # path ("//x" is a host there), and public only when each way of reading it is too.
        # A "#" is no fragment here: browsers never send one, and nginx passes it on to the
        # app as part of the path ("/public/a#/../private" reaches the app whole).
        sent = target.split("?", 1)[0] or "/"
        path = unquote(sent)
        settings = self.settings
        if is_public(path, settings, sent):
            return Response(status_code=200, headers=NO_STORE)
        if is_websocket_handshake(request.headers) and not matches_every_spelling(
            path, settings.ungated_websockets, sent
        ):
            # Cross-site websocket hijacking, as the middleware refuses it: the browser sends
            # the page's Origin with the handshake, and the cookie goes along regardless.
            page = request.headers.get("origin")
            if page is not None and page not in (origin, self._app_origin):
                # No page to send anyone to: nginx answers the JSON (X-Consent-Json).
                body = {"error": "forbidden_origin"}
                headers = {**NO_STORE, "X-Consent-Json": json.dumps(body)}
                return JSONResponse(body, status_code=403, headers=headers)
        refresher = self.engine.refresher
        try:
            session, cookies = await refresher.current_session(request.cookies)
            if session is not None:
                session = await refresher.with_consent_claim(session)
            # Refreshed (or ended) by a revocation mark: the content changed.
            changed = bool(cookies)
            if session is not None and not cookies and self.engine.sessions.needs_roll(session):
                cookies = await self.engine.sessions.save(session, request.cookies)
        except SharedStateError:
            return self.engine.pages.unavailable(as_json=True)
        # The claim is parsed once, for the user, the verdict and the purposes alike.
        user = User.from_claims(session.user, settings.consent_claim) if session else None
        verdict, given = judged(user.consent, settings) if user else (Verdict.LOGIN, NO_PURPOSES)
        missing: tuple[str, ...] = ()
        if verdict is Verdict.ALLOW and settings.require:
            missing = missing_purposes(path, given, settings, sent)
            verdict = Verdict.PURPOSE if missing else verdict
        if verdict is Verdict.ALLOW and user is not None:
            response = Response(status_code=200, headers=NO_STORE)
            for name, value in identity_headers(user, settings, self.signer, origin):
                response.raw_headers.append((name, value))
            # What the upstream must read instead of the request's Cookie header: the
            # session just refreshed (a mere roll changes only its expiry), or the one the
            # gate read where the header holds it ambiguously.
            rewritten = None
            if changed:
                rewritten = with_new_session([(b"cookie", held)], cookies)
            elif admitted:
                rewritten = with_session_pairs([(b"cookie", held)], admitted)
            if rewritten is not None:
                response.raw_headers.append((b"x-consent-forward-cookie", rewritten[-1][1]))
            return with_cookie_copies(with_cookies(response, cookies), cookies)
        url = settings.app_base_url + refusal_url(verdict, target, settings, "", missing)
        status_code, body = refusal_json(verdict, url, missing)
        # The proxy passes the original request's headers on to the check: an API call
        # or fetch gets the JSON the middleware would answer, never a redirect to a page.
        # A websocket handshake cannot follow a redirect either: the 401/403, as the
        # reverse proxy answers it.
        as_json = wants_json(path, request.headers, settings) or is_websocket_handshake(
            request.headers
        )
        if request.query_params.get("mode") == "redirect" and not as_json:
            # As the gate answers pages: a GET may come back to the login, a form post
            # is sent on with 303 (the browser must not re-post it to the provider).
            login_by_get = verdict is Verdict.LOGIN and method in ("GET", "HEAD")
            status = 302 if login_by_get else 303
            redirect = RedirectResponse(url, status_code=status, headers=NO_STORE)
            return with_cookie_copies(with_cookies(redirect, cookies), cookies)
        # nginx keeps only the status of an auth_request answer: the URL goes in a header
        # too, for auth_request_set to read, and for an API client the JSON it must get.
        headers = {**NO_STORE, "X-Consent-Redirect": url}
        if as_json:
            headers["X-Consent-Json"] = json.dumps(body, separators=(",", ":"))
        answer = JSONResponse(body, status_code=status_code, headers=headers)
        return with_cookie_copies(with_cookies(answer, cookies), cookies)


def with_cookie_copies(response: Response, cookies: list[bytes]) -> Response:
    """Each Set-Cookie also as ``X-Consent-Cookie-<n>``: nginx's ``auth_request_set`` sees
    only the first Set-Cookie of a check, and a chunked session needs them all."""
    for index, value in enumerate(cookies):
        response.raw_headers.append((f"x-consent-cookie-{index}".encode(), value))
    return response


def create_app() -> Sidecar:
    """The sidecar as configured by the environment (what each uvicorn worker builds)."""
    return Sidecar(Settings.from_env(), SidecarOptions.from_env())
