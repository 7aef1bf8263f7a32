"""Websockets through a real server (uvicorn) and a real client (websockets): the handshake
is refused with the gate's HTTP answer, or opens for a consented user of the app's origin."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from consent_middleware import ConsentMiddleware, Session, Settings, TokenSet, current_user
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, make_settings
from tests.live_server import free_port, serve
from tests.test_session import jar

# Every wait on the network is bounded: opening, receiving and closing.
TIMEOUT = 5.0
EVIL = "https://evil.example"


async def whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(current_user(websocket).sub)
    await websocket.close()


async def open_door(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("open")
    await websocket.close()


@dataclass(frozen=True)
class Server:
    settings: Settings
    base_url: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = make_settings(ungated_websockets=("/open", "/rooms/*"), app_base_url=base_url)
    app = Starlette(
        routes=[WebSocketRoute("/ws", whoami), WebSocketRoute("/open", open_door)],
        middleware=[Middleware(ConsentMiddleware, settings=settings)],
    )
    with serve(app, port) as url:
        assert url == base_url
        yield Server(settings, base_url)


def cookie_for(settings: Settings, sub: str, version: str) -> str:
    consent = {"given": True, "version": version, "date": "2026-01-01T00:00:00Z"}
    session = Session.from_claims(
        {"sub": sub, "email": "ws@example.com", CLAIM: consent},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    cookies = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def open_socket(url: str, cookie: str | None = None, origin: str | None = None) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie is not None else None
    return connect(
        url,
        additional_headers=headers,
        origin=Origin(origin) if origin is not None else None,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    )


def refused(url: str, cookie: str | None = None, origin: str | None = None) -> tuple[int, Any]:
    """The HTTP status and JSON body the client got instead of an open socket."""
    with pytest.raises(InvalidStatus) as caught:
        open_socket(url, cookie, origin).close()
    response = caught.value.response
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, json.loads(bytes(response.body))


def test_no_session_is_refused_with_401_and_the_login_url(server: Server) -> None:
    status, body = refused(f"{server.ws_url}/ws", origin=server.base_url)
    assert status == 401
    assert body == {
        "error": "login_required",
        "login_url": f"{server.base_url}/auth/login?returnTo=%2Fws",
    }


def test_session_without_the_current_consent_is_refused_with_403(server: Server) -> None:
    cookie = cookie_for(server.settings, "auth0|old-terms", version="v1")
    status, body = refused(f"{server.ws_url}/ws", cookie, origin=server.base_url)
    assert status == 403
    assert body == {
        "error": "consent_required",
        "consent_url": f"{server.base_url}/consent?returnTo=%2Fws",
    }


def test_consented_session_from_the_apps_origin_opens(server: Server) -> None:
    cookie = cookie_for(server.settings, "auth0|consented", version="v2")
    with open_socket(f"{server.ws_url}/ws", cookie, origin=server.base_url) as websocket:
        assert websocket.recv(timeout=TIMEOUT) == "auth0|consented"


def test_consented_session_from_a_foreign_origin_is_refused(server: Server) -> None:
    # Cross-site websocket hijacking: the browser sends the cookie along with evil's Origin.
    cookie = cookie_for(server.settings, "auth0|consented", version="v2")
    status, body = refused(f"{server.ws_url}/ws", cookie, origin=EVIL)
    assert status == 403
    assert body == {"error": "forbidden_origin"}
    # Another port of the same host is another origin too.
    other_port = server.base_url.rsplit(":", 1)[0] + ":1"
    assert refused(f"{server.ws_url}/ws", cookie, origin=other_port)[0] == 403


def test_ungated_path_opens_without_a_session(server: Server) -> None:
    with open_socket(f"{server.ws_url}/open") as websocket:
        assert websocket.recv(timeout=TIMEOUT) == "open"


def test_an_ungated_prefix_with_dot_segments_is_gated(server: Server) -> None:
    # "/rooms/%2e%2e/ws" is "/ws" to a server that resolves dot segments after decoding
    # (or WHATWG URL, before): it gets the gate and its Origin check, not the open door.
    cookie = cookie_for(server.settings, "auth0|consented", version="v2")
    status, body = refused(f"{server.ws_url}/rooms/%2e%2e/ws", cookie, origin=EVIL)
    assert (status, body) == (403, {"error": "forbidden_origin"})
    assert refused(f"{server.ws_url}/rooms/%2e%2e/ws")[0] == 401
