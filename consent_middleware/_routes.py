"""The ``/auth/*`` routes: login, callback, logout, profile."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ._engine import Engine, append_cookies, query_dict
from ._exceptions import IdentityProviderError, IdTokenError, TokenEndpointError
from ._redirects import return_to_or_home, safe_return_to
from ._refresh import SessionRefresher
from ._session import Session, Transaction

logger = logging.getLogger("consent_middleware")

# Answers to prompt=none that mean "the user must interact": fall back to a real login.
INTERACTION_REQUIRED = frozenset({"login_required", "interaction_required", "consent_required"})


class AuthRoutes:
    def __init__(self, engine: Engine, refresher: SessionRefresher) -> None:
        self.engine = engine
        self.refresher = refresher

    def routes(self) -> list[Route]:
        prefix = self.engine.settings.routes_prefix
        return [
            Route(f"{prefix}/login", self.login, methods=["GET"]),
            Route(f"{prefix}/callback", self.callback, methods=["GET"]),
            Route(f"{prefix}/logout", self.logout, methods=["GET"]),
            Route(f"{prefix}/profile", self.profile, methods=["GET"]),
        ]

    async def login(self, request: Request) -> Response:
        engine = self.engine
        requested = request.query_params.get("returnTo")
        return_to = safe_return_to(requested, engine.settings.app_base_url)
        if requested and return_to is None:
            return engine.error_page(
                "Refused return address",
                "The sign-in link asks to send you to a page outside this site, so it was not "
                "followed.",
                400,
                action_url=engine.url(f"{engine.settings.routes_prefix}/login"),
                action_label="Sign in",
            )
        extra = {k: v for k, v in query_dict(request).items() if k != "returnTo"}
        return await engine.start_login(return_to or engine.home_url, extra)

    async def callback(self, request: Request) -> Response:
        engine = self.engine
        params = request.query_params
        state = params.get("state", "")
        tx = engine.transactions.load(state, request.cookies) if state else None
        if tx is None:
            # No automatic retry here: an automatic one is how redirect loops start.
            return engine.error_page(
                "Sign-in expired",
                "This sign-in attempt has expired or was already completed. Please sign in again.",
                400,
                action_url=engine.url(f"{engine.settings.routes_prefix}/login"),
                action_label="Sign in again",
            )
        response = await self._complete(request, tx)
        response.headers.append(
            "set-cookie", engine.transactions.delete(tx.state).decode("latin-1")
        )
        return response

    async def _complete(self, request: Request, tx: Transaction) -> Response:
        engine = self.engine
        params = request.query_params
        issuer = params.get("iss")
        if issuer is not None:
            # RFC 9207: a provider that names itself in the response must be ours (mix-up).
            try:
                expected = (await engine.oidc.metadata()).issuer
            except IdentityProviderError as exc:
                return engine.unreachable(exc)
            if issuer != expected:
                logger.warning("callback from issuer %r, expected %r", issuer, expected)
                return engine.error_page(
                    "Sign-in rejected",
                    "The answer came from a different identity provider than the one "
                    "this sign-in was sent to.",
                    400,
                )
        error = params.get("error")
        if error:
            if tx.purpose == "silent" and error in INTERACTION_REQUIRED:
                # The consent is already stored, so this login will not ask for it again.
                return await engine.start_login(tx.return_to, expect=tx.expect)
            description = params.get("error_description", "")
            if error == "access_denied":
                return engine.error_page(
                    "Access denied",
                    f"The identity provider denied access: {description or error}.",
                    403,
                )
            return engine.error_page(
                "Sign-in failed",
                f"The identity provider reported {error!r}: {description or 'no details'}.",
                400,
                action_url=engine.url(f"{engine.settings.routes_prefix}/login"),
                action_label="Try again",
            )
        code = params.get("code")
        if not code:
            return engine.error_page(
                "Sign-in failed", "The identity provider sent no authorization code.", 400
            )
        try:
            claims, token_set = await engine.oidc.exchange_code(code, tx)
        except TokenEndpointError as exc:
            logger.warning("code exchange refused: %s", exc.error)
            return engine.error_page(
                "Sign-in failed",
                f"The identity provider refused to complete the sign-in ({exc.error}).",
                400,
                action_url=engine.url(f"{engine.settings.routes_prefix}/login"),
                action_label="Try again",
            )
        except IdTokenError as exc:
            logger.warning("ID token rejected: %s", exc.reason)
            return engine.error_page(
                "Sign-in rejected",
                f"The identity provider's answer was rejected: {exc.reason}.",
                400,
            )
        except IdentityProviderError as exc:
            return engine.unreachable(exc)
        cookies = request.cookies
        current = engine.sessions.load(cookies)
        if current is not None and current.user.get("sub") == claims["sub"]:
            session = current.refreshed(claims, token_set)
        else:
            session = Session.from_claims(claims, token_set)
        return self.refresher.finish(request, session, tx.return_to, tx.expect)

    async def logout(self, request: Request) -> Response:
        engine = self.engine
        session = engine.sessions.load(request.cookies)
        return_to = return_to_or_home(
            request.query_params.get("returnTo"), engine.settings.app_base_url
        )
        url = await engine.oidc.logout_url(
            session.token_set.id_token if session else None, return_to
        )
        response = RedirectResponse(url, status_code=302)
        return append_cookies(response, engine.sessions.clear(request.cookies))

    async def profile(self, request: Request) -> Response:
        session = self.engine.sessions.load(request.cookies)
        if session is None:
            login_url = self.engine.url(f"{self.engine.settings.routes_prefix}/login")
            return JSONResponse(
                {"error": "login_required", "login_url": login_url},
                status_code=401,
                headers={"Cache-Control": "no-store"},
            )
        return JSONResponse(session.user, headers={"Cache-Control": "no-store"})
