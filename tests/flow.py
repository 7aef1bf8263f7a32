"""A scripted browser over real HTTP: follows redirects one hop at a time, keeps cookies,
fills the dev tenant's login form and the package's forms."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from consent_middleware import Settings
from consent_middleware._purposes import Purpose
from consent_middleware._record import shown_sha256, terms_statement
from dev_tenant import DevTenant
from example_app.app import DEV_CLIENT_ID, DEV_TENANT_PATH, build_app, dev_tenant
from tests.live_server import free_port, serve

CLAIM = "https://consent.example.com/consent"
SECRET = "integration-secret-0123456789abcdef"
CLIENT_SECRET = "integration-client-secret"


class Swappable:
    """An ASGI app whose target can be replaced while the server runs (a redeploy).

    At shutdown every app it ever served gets its lifespan run, so each closes its
    HTTP client inside the server's event loop."""

    def __init__(self) -> None:
        self.target: Any = None
        self.deployed: list[Any] = []

    def swap(self, app: Any) -> None:
        self.target = app
        self.deployed.append(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.target(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        for app in self.deployed:
            await run_lifespan(app)
        await send({"type": "lifespan.shutdown.complete"})


async def run_lifespan(app: Any) -> None:
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        assert not message["type"].endswith(".failed"), message

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)


@dataclass
class Live:
    base: str
    tenant: DevTenant
    server: Swappable
    browsers: list[Browser] = field(default_factory=list)
    settings: Settings | None = None

    def shown(self, *offered: Purpose) -> str:
        """The digest a terms form of the current deployment carries, for a form built by
        hand (a consented user's page has none to read it from)."""
        assert self.settings is not None
        return shown_sha256(offered, terms_statement(self.settings))

    def deploy(self, **overrides: Any) -> Starlette:
        """(Re)build the example app with these settings, same tenant, same URL."""
        values: dict[str, Any] = {
            "domain": self.base + DEV_TENANT_PATH,
            "client_id": DEV_CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "secret": SECRET,
            "app_base_url": self.base,
            "consent_claim": CLAIM,
            "terms_version": "v1",
            "terms_url": self.base + "/terms",
            "public_paths": ("/", "/terms"),
            "http_timeout": 5.0,
        }
        values.update(overrides)
        self.settings = Settings(**values)
        app = build_app(self.settings, [Mount(DEV_TENANT_PATH, self.tenant)])
        self.server.swap(app)
        return app

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self.browsers.append(browser)
        return browser


@contextmanager
def live_example(**tenant_options: Any) -> Iterator[Live]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tenant = dev_tenant(base, CLIENT_SECRET, CLAIM, **tenant_options)
    server = Swappable()
    live = Live(base, tenant, server)
    live.deploy()
    try:
        with serve(server, port=port):
            yield live
    finally:
        for browser in live.browsers:
            browser.client.close()


_INPUT = re.compile(r"<input\b[^>]*>", re.I)
_ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')
_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.I | re.S)


def forms(page: str) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    found = []
    for attrs, body in _FORM.findall(page):
        form_attrs = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(attrs)}
        inputs = [
            {k.lower(): html.unescape(v) for k, v in _ATTR.findall(tag)}
            for tag in _INPUT.findall(body)
        ]
        found.append((form_attrs, inputs))
    return found


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(
            follow_redirects=False,
            timeout=10,
            headers={
                "accept": "text/html",
                "origin": base,
            },
        )
        self.visited: list[str] = []
        self.shown: list[str] = []  # URLs of pages that ended up on screen (GET, 200)
        self.response: httpx.Response | None = None

    def go(self, url: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        """Request ``url`` and follow redirects; returns the final response."""
        url = urljoin(self.base + "/", url)
        response = self.client.request(method, url, **kwargs)
        self.visited.append(url)
        hops = 0
        while response.is_redirect:
            hops += 1
            assert hops < 15, f"redirect loop: {self.visited[-15:]}"
            url = urljoin(url, response.headers["location"])
            response = self.client.get(url)
            self.visited.append(url)
        self.response = response
        if response.request.method == "GET" and response.status_code == 200:
            self.shown.append(url)
        return response

    def submit(self, page: httpx.Response, index: int = 0, **fields: str) -> httpx.Response:
        attrs, inputs = forms(page.text)[index]
        data = {
            i["name"]: i.get("value", "")
            for i in inputs
            if "name" in i and i.get("type", "text") not in ("checkbox",)
        }
        data.update(fields)
        action = urljoin(str(page.url), attrs.get("action") or str(page.url))
        return self.go(action, attrs.get("method", "get").upper(), data=data)

    def login(
        self, page: httpx.Response, email: str = "dev@example.com", password: str = "dev-password"
    ) -> httpx.Response:
        assert 'name="password"' in page.text, "expected the dev tenant's login form"
        return self.submit(page, email=email, password=password)

    def accept(self, page: httpx.Response) -> httpx.Response:
        assert 'name="agree"' in page.text, "expected the terms page"
        return self.submit(page, agree="yes")

    def profile(self) -> dict[str, Any]:
        response = self.client.get(self.base + "/auth/profile")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def idp_hops(self) -> list[str]:
        return [u for u in self.visited if DEV_TENANT_PATH + "/authorize" in u]

    def login_forms_shown(self) -> int:
        return sum(1 for u in self.shown if "/u/login" in u)
