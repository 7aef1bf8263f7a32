"""The consent routes: the terms page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._engine import Engine
from ._models import Consent
from ._redirects import return_to_or_home


class ConsentRoutes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[Route]:
        path = self.engine.settings.consent_path
        return [Route(path, self.terms, methods=["GET"])]

    async def terms(self, request: Request) -> Response:
        engine = self.engine
        settings = engine.settings
        return_to = return_to_or_home(request.query_params.get("returnTo"), settings.app_base_url)
        session = engine.sessions.load(request.cookies)
        if session is None:
            return await engine.start_login(engine.url(request.url.path + "?" + request.url.query))
        consent = Consent.from_claim(session.user.get(settings.consent_claim))
        return engine.templates.render(
            "consent.html",
            settings=settings,
            consent=consent,
            return_to=return_to,
            user=session.user,
        )
