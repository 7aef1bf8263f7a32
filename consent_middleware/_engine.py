"""The composition root: everything a gate needs, built once from settings.

The middleware is one front over it; the sidecar is another. Nothing else constructs
clients, stores or routes, so each is made exactly once per gate and wired the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._choices import ChoiceRoutes
from ._config import Settings
from ._consent import ConsentRoutes
from ._exceptions import ConfigurationError, ConsentMiddlewareError
from ._gate import wants_json
from ._login import Login
from ._management import ManagementClient
from ._oidc import OIDCClient
from ._pages import Pages
from ._record import ConsentWriter, EventLedger, LedgerOpener
from ._refresh import SessionRefresher
from ._responses import PRIVATE
from ._revocation import Revocations
from ._routes import AuthRoutes
from ._session import CookieSessionStore, SessionStore
from ._state import LocalState, SharedState
from ._transactions import TransactionStore
from ._withdrawal import WithdrawalRoutes

logger = logging.getLogger("consent_middleware")

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class Engine:
    settings: Settings
    http: httpx.AsyncClient
    oidc: OIDCClient
    management: ManagementClient
    sessions: SessionStore
    state: SharedState
    revocations: Revocations
    transactions: TransactionStore
    pages: Pages
    login: Login
    refresher: SessionRefresher
    writer: ConsentWriter
    # path -> method -> endpoint, for the auth and consent routes.
    routes: dict[str, dict[str, Endpoint]]
    # Those of them that answer JSON whoever asks.
    json_routes: frozenset[str] = frozenset()
    # A client passed in is the caller's to close; one made here is ours.
    owns_http: bool = True

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        session_store: SessionStore | None = None,
        http_client: httpx.AsyncClient | None = None,
        shared_state: SharedState | None = None,
    ) -> Engine:
        # One pooled client for discovery, JWKS, grants and the Management API.
        http = http_client or httpx.AsyncClient(timeout=settings.http_timeout)
        oidc = OIDCClient(settings, http)
        management = ManagementClient(settings, oidc)
        state = shared_state or _shared_state(settings)
        sessions = session_store or _session_store(settings, state)
        revocations = Revocations(settings, state)
        transactions = TransactionStore(settings)
        pages = Pages(settings)
        login = Login(oidc, transactions, pages)
        refresher = SessionRefresher(settings, oidc, sessions, login, revocations, state, pages)
        auth = AuthRoutes(
            settings, oidc, sessions, transactions, login, refresher, revocations, state, pages
        )
        writer = ConsentWriter(settings, management, _ledger_opener(settings))
        consent = ConsentRoutes(
            settings,
            oidc,
            sessions,
            management,
            login,
            refresher,
            revocations,
            state,
            pages,
            writer,
        )
        routes: dict[str, dict[str, Endpoint]] = {}
        choices = ChoiceRoutes(consent)
        withdrawals = WithdrawalRoutes(consent)
        for route in (
            *auth.routes(),
            *consent.routes(),
            *withdrawals.routes(),
            *choices.routes(),
        ):
            for method in route.methods or ():
                routes.setdefault(route.path, {})[method] = route.endpoint
        return cls(
            settings=settings,
            http=http,
            oidc=oidc,
            management=management,
            sessions=sessions,
            state=state,
            revocations=revocations,
            transactions=transactions,
            pages=pages,
            login=login,
            refresher=refresher,
            writer=writer,
            routes=routes,
            json_routes=auth.json_paths() | choices.json_paths(),
            owns_http=http_client is None,
        )

    async def serve_own_route(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Answer one of the auth and consent routes.

        ``path`` is the path below the app's mount point. An unknown path is a 404 page
        and a wrong method a 405 with ``Allow``; a package error becomes its page through
        ``Pages.for_error``: never a 500.
        """
        methods = self.routes.get(path)
        endpoint = methods.get(scope["method"]) if methods else None
        if methods is None or endpoint is None:
            response = self.pages.status(404 if methods is None else 405, self._json(path, scope))
            if methods is not None:
                response.headers["Allow"] = ", ".join(sorted(methods))
        else:
            try:
                response = await endpoint(Request(scope, receive))
            except ConsentMiddlewareError as exc:
                response = self.pages.for_error(exc, self._json(path, scope))
        if "set-cookie" in response.headers:
            # A response that sets a cookie (a session, a login's transaction) is for this
            # browser alone: no shared cache may keep it, whatever the route said.
            response.headers["cache-control"] = PRIVATE.decode()
        await response(scope, receive, send)

    def _json(self, path: str, scope: Scope) -> bool:
        """Whether an own route's error is answered in JSON: always on the routes that
        answer JSON (the token, the profile, the receipt, the provider's logout call), as
        on any route for an API client."""
        return path in self.json_routes or wants_json(path, Headers(scope=scope), self.settings)

    async def start(self) -> None:
        """Begin following the shared state (idempotent; done before the first request)."""
        await self.state.start()

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.state.aclose()
        if self.owns_http:
            await self.http.aclose()


def _ledger_opener(settings: Settings) -> LedgerOpener | None:
    if not settings.ledger_url:
        return None
    # Settings found the extra installed and the URL one that can work.
    from ._ledger import Ledger

    async def open_ledger() -> EventLedger:
        return await Ledger.open(settings.ledger_url, settings.ledger_key)

    return open_ledger


def _shared_state(settings: Settings) -> SharedState:
    if not settings.redis_url:
        if _one_of_several_processes():
            # Nothing fails: other workers keep admitting a session logged out or withdrawn
            # here, and may each spend one refresh token. Say so, once, at start-up.
            logger.warning(
                "this process looks like one of several workers and CONSENT_REDIS_URL is "
                "unset: logouts, withdrawals and refresh locks stay in this process; "
                "set CONSENT_REDIS_URL when several processes serve the app"
            )
        return LocalState()
    from ._redis_state import RedisState  # Settings found the extra installed

    return RedisState(settings.redis_url)


def _one_of_several_processes() -> bool:
    """Whether this server process was started by another (uvicorn's ``--workers`` and
    ``--reload`` spawn them) or ``WEB_CONCURRENCY`` asks for several."""
    if multiprocessing.parent_process() is not None:
        return True
    try:
        return int(os.environ.get("WEB_CONCURRENCY") or 1) > 1
    except ValueError:
        return False


def _session_store(settings: Settings, state: SharedState) -> SessionStore:
    if settings.session_store == "cookie":
        return CookieSessionStore(settings)
    from ._redis_sessions import RedisSessionStore
    from ._redis_state import RedisState

    if not isinstance(state, RedisState):
        raise ConfigurationError("CONSENT_SESSION_STORE=redis needs a Redis shared state")
    return RedisSessionStore(settings, state)
