"""The ``/auth/*`` routes: login, callback, logout, profile."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ._access import DEFAULT_MIN_TTL, renewal_not_for_age, token_for
from ._audiences import AudienceMismatch
from ._config import Settings
from ._exceptions import AccessTokenError, ConsentMiddlewareError, IdTokenError, SharedStateError
from ._gate import Verdict, decide, refusal_body
from ._login import Login
from ._oidc import LOGOUT_TOKEN_MAX_AGE, OIDCClient
from ._pages import NO_STORE, Pages
from ._redirects import origin_of, return_to_or_home, safe_return_to
from ._refresh import SessionRefresher, with_cookies
from ._revocation import Revocations
from ._session import Session, SessionStore
from ._state import SharedState
from ._transactions import Purpose, Transaction, TransactionStore

logger = logging.getLogger("consent_middleware")

# Answers to prompt=none that mean "the user must interact": fall back to a real login.
INTERACTION_REQUIRED = frozenset({"login_required", "interaction_required", "consent_required"})
# The same answers to any other login, in words (a bare code explains nothing to a person).
_INTERACTION_WORDS = {
    "login_required": "The identity provider needs you to sign in again.",
    "interaction_required": "The identity provider needs you to complete a step on its "
    "sign-in page.",
    "consent_required": "The identity provider needs you to allow this site access to "
    "your account.",
}


# The auth routes read by code (the browser's own, an API client, the provider), not people.
JSON_ROUTES = ("profile", "backchannel-logout", "access-token")


@dataclass
class AuthRoutes:
    settings: Settings
    oidc: OIDCClient
    sessions: SessionStore
    transactions: TransactionStore
    login_flow: Login
    refresher: SessionRefresher
    revocations: Revocations
    state: SharedState
    pages: Pages

    def routes(self) -> list[Route]:
        prefix = self.settings.routes_prefix
        token = Route(f"{prefix}/access-token", self.access_token, methods=["GET"])
        # GET only: Starlette adds HEAD to a GET route, and a HEAD here could spend the
        # refresh token for an answer nobody reads.
        assert token.methods is not None
        token.methods.discard("HEAD")
        return [
            Route(f"{prefix}/login", self.login, methods=["GET"]),
            Route(f"{prefix}/callback", self.callback, methods=["GET"]),
            Route(f"{prefix}/logout", self.logout, methods=["GET"]),
            Route(f"{prefix}/profile", self.profile, methods=["GET"]),
            Route(f"{prefix}/backchannel-logout", self.backchannel_logout, methods=["POST"]),
            token,
        ]

    def json_paths(self) -> frozenset[str]:
        """The routes that answer JSON, whoever asks (their errors too)."""
        prefix = self.settings.routes_prefix
        return frozenset(f"{prefix}/{name}" for name in JSON_ROUTES)

    async def login(self, request: Request) -> Response:
        requested = request.query_params.get("returnTo")
        return_to = safe_return_to(requested, self.settings.app_base_url)
        if requested and return_to is None:
            # Refused rather than shortened: the gate never builds such a link (it keeps a
            # too-long address's path only), so this one was written by someone else.
            return self.pages.sign_in_again(
                "Refused return address",
                "The sign-in link asks to send you to a page outside this site, or to an "
                "address too long to keep, so it was not followed.",
                400,
                "Sign in",
            )
        # The OIDC client lets through only the parameters a caller may set.
        extra = {k: v for k, v in request.query_params.items() if k != "returnTo"}
        return await self.login_flow.redirect(
            return_to or self.pages.home_url, cookies=request.cookies, extra=extra
        )

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        state = params.get("state", "")
        tx = self.transactions.load(state, request.cookies) if state else None
        if tx is None:
            signed_in = await self._signed_in(request)
            if signed_in is not None:
                return signed_in
            # No automatic retry here: an automatic one is how redirect loops start.
            return self.pages.sign_in_again(
                "Sign-in expired",
                "This sign-in attempt has expired or was already completed. Please sign in again.",
                400,
                "Sign in again",
            )
        try:
            response = await self._complete(request, tx)
        except ConsentMiddlewareError as exc:
            response = self.pages.for_error(exc, return_to=tx.return_to)
        return with_cookies(response, [self.transactions.delete(tx.state)])

    async def _signed_in(self, request: Request) -> Response | None:
        """For a callback whose transaction is gone (a completed sign-in's address opened
        again: the back button, a bookmark, history) in a browser that holds a session:
        the home page, where it is signed in already (the transaction, and with it the
        page it was for, is gone). None without a session: that sign-in has expired."""
        try:
            session, cookies = await self.refresher.current_session(request.cookies)
        except SharedStateError:
            return None  # the store cannot vouch for the session: the plain page
        if session is None:
            return None
        return with_cookies(RedirectResponse(self.pages.home_url, status_code=303), cookies)

    async def _complete(self, request: Request, tx: Transaction) -> Response:
        pages = self.pages
        params = request.query_params
        issuer = params.get("iss")
        # RFC 9207: a provider that names itself in the response must be ours (mix-up).
        if issuer is not None and issuer != (await self.oidc.metadata()).issuer:
            logger.warning("callback from issuer %r, expected another", issuer)
            return pages.error(
                "Sign-in rejected",
                "The answer came from a different identity provider than the one "
                "this sign-in was sent to.",
                400,
            )
        error = params.get("error")
        if error:
            if tx.purpose is Purpose.SILENT and error in INTERACTION_REQUIRED:
                # The consent is already stored, so this login will not ask for it again.
                # This transaction's cookie is deleted on the way out: it needs no room.
                done = self.transactions.cookie_name(tx.state)
                cookies = {k: v for k, v in request.cookies.items() if k != done}
                return await self.login_flow.redirect(
                    tx.return_to, cookies=cookies, expect=tx.expect
                )
            description = params.get("error_description", "")
            logger.info("the provider answered the login with %r: %r", error, description)
            if error == "access_denied":
                return pages.error(
                    "Access denied",
                    f"The identity provider denied access: {description or error}.",
                    403,
                )
            words = _INTERACTION_WORDS.get(error) or (
                f"The identity provider reported {error!r}: {description or 'no details'}."
            )
            # Trying again comes back to where this sign-in was going.
            return pages.sign_in_again(
                "Sign-in failed", words, 400, "Try again", pages.login_to(tx.return_to)
            )
        code = params.get("code")
        if not code:
            return pages.sign_in_again(
                "Sign-in failed",
                "The identity provider sent no authorization code.",
                400,
                "Try again",
                pages.login_to(tx.return_to),
            )
        result = await self.oidc.authorization_code_grant(
            code, code_verifier=tx.code_verifier, nonce=tx.nonce
        )
        cookies = request.cookies
        current = await self.sessions.load(cookies)
        same_user = current is not None and current.user.get("sub") == result.claims["sub"]
        if current is not None and same_user and tx.purpose is Purpose.SILENT:
            # A prompt=none round trip refreshes the session it started from.
            session = current.refreshed_by(result)
        else:
            # A login is a new session (new sid, new store id): never one planted before it.
            session = Session.from_grant(result)
        return await self.refresher.finish(cookies, session, tx.return_to, tx.expect)

    async def logout(self, request: Request) -> Response:
        session, _ = await self.refresher.current_session(request.cookies)
        if session is not None:
            # Every copy of this cookie ends, not just the one in this browser.
            await self.revocations.end_session(session.sid)
            if session.token_set.refresh_token:
                await self.oidc.revoke_refresh_token(session.token_set.refresh_token)
        return_to = return_to_or_home(
            request.query_params.get("returnTo"), self.settings.app_base_url
        )
        url = await self.oidc.logout_url(session.token_set.id_token if session else None, return_to)
        response = RedirectResponse(url, status_code=302)
        return with_cookies(response, await self.sessions.clear(request.cookies))

    async def profile(self, request: Request) -> Response:
        # The marks apply here too: an ended session's claims are not shown.
        session, cookies = await self.refresher.current_session(request.cookies)
        if session is None:
            response: Response = self.pages.json_error(
                "login_required", 401, login_url=self.pages.login_url
            )
        else:
            response = JSONResponse(session.user, headers=NO_STORE)
        return with_cookies(response, cookies)

    async def access_token(self, request: Request) -> Response:
        """The access token for the site's own browser code (nextjs-auth0's route): JSON
        ``{token, expires_at, scope}``, renewed when it is about to run out; with
        ``?audience=``, a token for that API (and ``audience`` in the answer)."""
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and origin != origin_of(self.settings.app_base_url)
        ):
            # CORS already keeps a foreign page from reading the answer; this keeps it from
            # spending the user's refresh token too.
            return self.pages.json_error("forbidden", 403)
        session, cookies = await self.refresher.current_session(request.cookies)
        # Decided as the gate decides (the claim from the ID token when nextjs-auth0 filtered
        # it); the session itself, written again after a grant, stays as it was.
        decided = await self.refresher.with_consent_claim(session) if session else None
        verdict = decide(decided, self.settings)
        if session is None or verdict is not Verdict.ALLOW:
            # A token for the APIs is what the consent gates: none without it.
            status, body = refusal_body(verdict, self.pages.path("/"), self.settings)
            return with_cookies(JSONResponse(body, status, headers=NO_STORE), cookies)
        audience = request.query_params.get("audience") or None
        try:
            current, token = await token_for(
                request,
                self.refresher,
                session,
                refresh=False,
                min_ttl=DEFAULT_MIN_TTL,
                audience=audience,
            )
        except AccessTokenError as exc:
            fresh = renewal_not_for_age(session, time.time())
            response = self.pages.access_token_error(exc.code, as_json=True, login_helps=not fresh)
            if response is None:
                response = self.pages.json_error(
                    "login_required", 401, code=exc.code, login_url=self.pages.login_url
                )
            elif isinstance(exc, AudienceMismatch):
                # The grant rotated the refresh token all the same: keep what it handed out.
                cookies = await self.sessions.save(exc.session, request.cookies)
            return with_cookies(response, cookies)
        if current is not session:
            cookies = await self.sessions.save(current, request.cookies)
        answer = {"token": token.token, "expires_at": token.expires_at, "scope": token.scope}
        if audience:  # the API asked for, the session's own included
            answer["audience"] = audience
        return with_cookies(JSONResponse(answer, headers=NO_STORE), cookies)

    async def backchannel_logout(self, request: Request) -> Response:
        """OIDC Back-Channel Logout 1.0: the provider ends sessions from its side (2.5)."""
        try:
            form = await request.form()
        except Exception:  # any unparsable body is the sender's mistake, never a 500
            form = None
        token = form.get("logout_token") if form is not None else None
        if not isinstance(token, str) or not token:
            return _logout_refused("the request carries no logout_token")
        try:
            claims = await self.oidc.verify_logout_token(token)
        except IdTokenError as exc:
            logger.warning("logout token refused: %s", exc.reason)
            return _logout_refused(exc.reason)
        # The provider sends a logout once (Auth0 does not retry): with the shared store
        # away, it is still taken. The mark holds here at once and reaches the other
        # replicas when the store answers again (RedisState sends it again until then).
        try:
            # 2.6 step 10: a jti seen before is a replay. Counted in the shared state, so a
            # token replayed to another replica is refused there too.
            seen, _ = await self.state.incr(f"logout-jti:{claims['jti']}", LOGOUT_TOKEN_MAX_AGE)
        except SharedStateError:
            seen = 1  # a replay could only end the sessions this token names, again
        if seen > 1:
            return _logout_refused("this logout token was already used")
        sid, sub = claims.get("sid"), claims.get("sub")
        ended = 0
        try:
            # 2.7: a sid ends that login session; a sub alone ends all of the user's.
            if isinstance(sid, str) and sid:
                await self.revocations.end_session(sid)
                ended = await self.sessions.delete_by(sid=sid)
            else:
                await self.revocations.end_user(str(sub))
                ended = await self.sessions.delete_by(sub=str(sub))
        except SharedStateError as exc:
            logger.warning("back-channel logout taken while the shared store is away: %s", exc)
        logger.info("back-channel logout ended %d stored session(s)", ended)
        return Response(status_code=200, headers=NO_STORE)


def _logout_refused(reason: str) -> Response:
    # Back-Channel Logout 1.0, 2.8: 400 with an OAuth-style error body.
    return JSONResponse(
        {"error": "invalid_request", "error_description": reason},
        status_code=400,
        headers=NO_STORE,
    )
