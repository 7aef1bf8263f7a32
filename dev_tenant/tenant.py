"""DevTenant: an Auth0-compatible OIDC provider and Management API subset, as an ASGI app.

For development and tests only. Everything lives in memory and vanishes on restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dev_tenant.authorization import FormRequest, TenantServer
from dev_tenant.backchannel import send_logout
from dev_tenant.directory import MIN_PASSWORD_LENGTH, UserDirectory
from dev_tenant.management import ManagementAPI, api_error
from dev_tenant.pages import error_page, login_page, page
from dev_tenant.records import DevClient
from dev_tenant.state import Failure, KeyRing, SsoSession, TenantState

logger = logging.getLogger("dev_tenant")

SSO_COOKIE = "dev_tenant_sso"
LOGIN_LIFETIME = 600


class DevTenant:
    def __init__(
        self,
        base_url: str,
        clients: Iterable[DevClient],
        consent_claim: str | None = None,
        *,
        advertise_end_session: bool = True,
        rotate_refresh_tokens: bool = True,
        access_token_lifetime: int = 3600,
        apis: Iterable[str] = (),
        multi_resource_refresh: bool = True,
    ) -> None:
        """``access_token_lifetime`` in seconds (short ones show renewal); ``apis``: the API
        identifiers a login's ``audience`` or a refresh's ``audience``/``resource`` may name
        (tokens for them are JWTs); ``multi_resource_refresh=False`` answers a refresh for
        another API with the login's audience, as Auth0 does without an MRRT policy."""
        self.state = TenantState(
            base_url,
            clients,
            consent_claim,
            advertise_end_session=advertise_end_session,
            rotate_refresh_tokens=rotate_refresh_tokens,
            access_token_lifetime=access_token_lifetime,
            apis=apis,
            multi_resource_refresh=multi_resource_refresh,
        )
        self.base_url = self.state.base_url
        self.server = TenantServer(self.state)
        self.management = ManagementAPI(self.state)
        self._cookie_path = urlsplit(self.base_url).path or "/"
        self._app = Starlette(routes=self._routes())
        logger.warning(
            "DEVELOPMENT tenant at %s: in-memory users, not for production.", self.base_url
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            self.requests.append((scope["method"], path))
            failure = self.state.take_failure(path)
            if failure is not None and failure.delay:
                await asyncio.sleep(failure.delay)
            if failure is not None and failure.status is not None:
                response = api_error(
                    failure.status,
                    "Injected failure",
                    "The development tenant was told to fail this request.",
                    failure.headers,
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)

    # Test and operator controls

    def fail_next(
        self,
        path_suffix: str,
        status: int | None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests whose path ends with ``path_suffix`` with
        ``status`` (after ``delay`` seconds; ``status=None`` only delays them)."""
        self.state.failures.append(
            Failure(unquote(path_suffix), status, times, dict(headers or {}), delay)
        )

    def slow_next(self, path_suffix: str, delay: float, times: int = 1) -> None:
        self.fail_next(path_suffix, None, times, delay=delay)

    def end_all_sessions(self) -> None:
        self.state.sessions.clear()

    def rotate_signing_key(self) -> None:
        self.keys.rotate()

    def revoke_refresh_tokens(self) -> None:
        for record in self.state.refresh_tokens.values():
            record.revoked = True

    async def end_user_sessions(self, user_id: str) -> None:
        """What an administrator's "revoke sessions" does: every login of the user ends, and
        the clients hear it through back-channel logout (one token naming the user)."""
        state = self.state
        for cookie in [c for c, s in state.sessions.items() if s.user_id == user_id]:
            del state.sessions[cookie]
        await send_logout(state, user_id, None)

    # What tests and the example read and change

    @property
    def users(self) -> UserDirectory:
        return self.state.users

    @property
    def keys(self) -> KeyRing:
        return self.state.keys

    @property
    def issuer(self) -> str:
        return self.state.issuer

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.state.requests

    @property
    def consent_claim(self) -> str | None:
        return self.state.consent_claim

    @consent_claim.setter
    def consent_claim(self, name: str | None) -> None:
        self.state.consent_claim = name

    def id_token_profile(self, user_id: str, scope: str) -> dict[str, Any]:
        return self.state.id_token_profile(user_id, scope)

    # Internals

    def _routes(self) -> list[Route]:
        return [
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/.well-known/jwks.json", self.jwks),
            Route("/authorize", self.authorize),
            Route("/u/login", self.login, methods=["GET", "POST"]),
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/userinfo", self.userinfo, methods=["GET", "POST"]),
            Route("/oidc/logout", self.logout, methods=["GET", "POST"]),
            Route("/v2/logout", self.logout),
            Route(
                "/api/v2/users/{user_id:path}",
                self.management.user,
                methods=["GET", "PATCH", "DELETE"],
            ),
        ]

    async def discovery(self, request: Request) -> Response:
        base = self.base_url
        document: dict[str, Any] = {
            "issuer": self.state.issuer,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "nonce",
                "auth_time",
                "name",
                "nickname",
                "email",
                "email_verified",
                "updated_at",
            ],
            "request_parameter_supported": False,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
        }
        if self.state.advertise_end_session:
            document["end_session_endpoint"] = f"{base}/oidc/logout"
        return JSONResponse(document)

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.keys.jwks(), headers={"cache-control": "max-age=300"})

    def _authorize_request(self, params: dict[str, str], headers: Any) -> FormRequest:
        return FormRequest("GET", f"{self.base_url}/authorize?{urlencode(params)}", headers, params)

    def _sso_user(self, request: Request) -> dict[str, Any] | None:
        session = self.state.sessions.get(request.cookies.get(SSO_COOKIE, ""))
        if session is None:
            return None
        user = self.users.get(session.user_id)
        if user is not None:
            user.update(auth_time=session.auth_time, sid=session.sid)
        return user

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        oauth_request = self._authorize_request(params, request.headers)
        user = self._sso_user(request)
        try:
            grant = self.server.get_consent_grant(oauth_request, end_user=user)
        except OAuth2Error as error:
            return self._authorize_error(error)
        audience = params.get("audience")
        if audience and audience not in self.state.apis:
            # Auth0's answer for an API identifier it does not have.
            unknown = OAuth2Error(
                description=f"Service not found: {audience}",
                error="access_denied",
                state=oauth_request.payload.state,
                redirect_uri=oauth_request.payload.redirect_uri,
            )
            return self._authorize_error(unknown)
        if user is None or grant.prompt == "login":
            login_id = secrets.token_urlsafe(16)
            self.state.logins[login_id] = {
                "params": params,
                "csrf": secrets.token_urlsafe(16),
                "expires": time.time() + LOGIN_LIFETIME,
            }
            return RedirectResponse(f"{self.base_url}/u/login?state={login_id}", 302)
        return self._issue_code(oauth_request, grant, user)

    def _issue_code(self, oauth_request: FormRequest, grant: Any, user: dict[str, Any]) -> Response:
        if self.users.is_blocked(user["user_id"]):
            # What Auth0 does when a post-login Action calls api.access.deny(reason).
            error = OAuth2Error(
                description="user is blocked",
                error="access_denied",
                state=oauth_request.payload.state,
                redirect_uri=oauth_request.payload.redirect_uri,
            )
            return self._authorize_error(error)
        status, _, headers = self.server.create_authorization_response(
            oauth_request, grant_user=user, grant=grant
        )
        return Response(status_code=status, headers=dict(headers))

    def _authorize_error(self, error: OAuth2Error) -> Response:
        status, _, headers = error()
        if error.redirect_uri:
            return Response(status_code=status, headers=dict(headers))
        # No verified redirect URI to send the error to: tell the person in the browser.
        message = error.description or "Bad request."
        return error_page("Cannot log in", f"{error.error}: {message}", 400)

    async def login(self, request: Request) -> Response:
        form = await request.form() if request.method == "POST" else None
        source = form if form is not None else request.query_params
        login_id = str(source.get("state", ""))
        pending = self.state.logins.get(login_id)
        if pending is None or pending["expires"] < time.time():
            return error_page(
                "Login expired",
                "This login link is not valid any more. "
                "Go back to the application and start again.",
                400,
            )
        action = f"{self.base_url}/u/login"
        target = urlsplit(str(pending["params"].get("redirect_uri", "")))
        # Only a client's registered redirect URI gets this far (checked at /authorize).
        callback = f"{target.scheme}://{target.netloc}" if target.netloc else ""
        if form is None:
            return login_page(action, login_id, pending["csrf"], callback_origin=callback)
        if not secrets.compare_digest(str(form.get("csrf", "")), pending["csrf"]):
            return error_page("Login refused", "The form was not sent from this page.", 403)
        email = str(form.get("email", "")).strip().lower()
        password = str(form.get("password", ""))
        user = self.users.authenticate(email, password)
        if user is None and self.users.by_email(email) is None and "@" in email:
            if len(password) >= MIN_PASSWORD_LENGTH:
                user = self.users.create(email, password)
        if user is None:
            return login_page(
                action,
                login_id,
                pending["csrf"],
                email,
                "Wrong email or password.",
                401,
                callback_origin=callback,
            )
        del self.state.logins[login_id]
        sso = secrets.token_urlsafe(24)
        session = SsoSession(user["user_id"], int(time.time()))
        self.state.sessions[sso] = session
        user.update(auth_time=session.auth_time, sid=session.sid)
        oauth_request = self._authorize_request(pending["params"], request.headers)
        try:
            grant = self.server.get_consent_grant(oauth_request, end_user=user)
        except OAuth2Error as error:
            response = self._authorize_error(error)
        else:
            response = self._issue_code(oauth_request, grant, user)
        response.set_cookie(
            SSO_COOKIE,
            sso,
            path=self._cookie_path,
            httponly=True,
            samesite="lax",
            secure=self.base_url.startswith("https:"),
        )
        return response

    async def token(self, request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        oauth_request = FormRequest("POST", str(request.url), request.headers, form)
        try:
            status, body, headers = self.server.create_token_response(oauth_request)
        except ValueError:  # an Authorization header Authlib cannot decode
            body = {"error": "invalid_client", "error_description": "Malformed client auth."}
            return JSONResponse(body, 401)
        return JSONResponse(body, status, headers=dict(headers))

    async def userinfo(self, request: Request) -> Response:
        record = self.state.bearer(request.headers, self.state.issuer + "userinfo")
        if record is None or record.user_id is None:
            return JSONResponse(
                {"error": "invalid_token"},
                401,
                headers={"www-authenticate": 'Bearer error="invalid_token"'},
            )
        claims = self.state.id_token_profile(record.user_id, record.scope)
        claims.pop(self.state.consent_claim or "", None)
        return JSONResponse(claims)

    async def logout(self, request: Request) -> Response:
        params = request.query_params
        ended = self.state.sessions.pop(request.cookies.get(SSO_COOKIE, ""), None)
        if ended is not None:
            # Auth0 tells every client with a back-channel URI that this login ended.
            await send_logout(self.state, ended.user_id, ended.sid)
        # Each endpoint honours only its own parameter name, as Auth0 does.
        oidc = request.url.path.endswith("/oidc/logout")
        target = params.get("post_logout_redirect_uri" if oidc else "returnTo")
        client = self.state.clients.get(params.get("client_id", ""))
        if target and client is not None and target in client.logout_urls:
            if params.get("state"):
                target += ("&" if "?" in target else "?") + urlencode({"state": params["state"]})
            response: Response = RedirectResponse(target, 302)
        elif target:
            response = error_page(
                "Logged out",
                "You are logged out. The return address is not one of the "
                "application's allowed logout URLs, so you stay here.",
                400,
            )
        else:
            response = page("Logged out", "<p>You are logged out of the development tenant.</p>")
        response.delete_cookie(SSO_COOKIE, path=self._cookie_path)
        return response
