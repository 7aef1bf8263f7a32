"""What the sidecar reads of a request before it decides: the request target, the proxy's
account of the original request, and the session cookies an upstream will read."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from consent_middleware import Session, Settings, TokenSet
from consent_middleware._cookies import canonical_session_pairs, session_cookies
from consent_middleware._session import CookieSessionStore
from consent_middleware.sidecar import Sidecar, SidecarOptions
from tests.conftest import CLAIM, make_settings
from tests.live_server import free_port, serve
from tests.test_session import jar

SETTINGS = make_settings(public_paths=("/public/*",))


def session_cookie(sub: str, consented: bool, settings: Settings = SETTINGS) -> str:
    """The value of ``sub``'s ``__session`` cookie (unchunked), consented or not."""
    consent = {"given": consented, "version": settings.terms_version}
    tokens = TokenSet("at", "idt", "rt", int(time.time()) + 600)
    session = Session.from_claims({"sub": sub, CLAIM: consent}, tokens)
    saved = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
    assert list(saved) == ["__session"]
    return saved["__session"]


async def echo(request: Request) -> Response:
    return JSONResponse({"cookie": request.headers.get("cookie"), "path": request.url.path})


async def big_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())


async def refusing(websocket: WebSocket) -> None:
    await websocket.send_denial_response(JSONResponse({"error": "not here"}, status_code=404))


UPSTREAM = Starlette(
    routes=[
        WebSocketRoute("/ws", big_echo),
        WebSocketRoute("/ws-refused", refusing),
        Route("/{path:path}", echo, methods=["GET"]),
    ]
)


@dataclass
class Hits:
    count: int = 0


@contextmanager
def sidecar_over_h11(upstream: str, other: Hits) -> Iterator[tuple[int, int]]:
    """A proxying sidecar on uvicorn's h11 protocol (which hands over a request target as
    the client wrote it), and another server on loopback, counting what reaches it."""

    async def elsewhere(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return  # uvicorn goes on without one
        other.count += 1
        await JSONResponse({"reached": "elsewhere"})(scope, receive, send)

    with ExitStack() as stack:
        other_base = stack.enter_context(serve(elsewhere))
        sidecar = Sidecar(SETTINGS, SidecarOptions(upstream=upstream))
        base = stack.enter_context(serve(sidecar, http="h11"))
        yield int(base.rsplit(":", 1)[1]), int(other_base.rsplit(":", 1)[1])


def raw_request(port: int, target: str, *headers: str) -> bytes:
    """One request sent byte for byte (no client library would send these targets)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers, "Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_request_target_that_is_no_path_reaches_no_other_host() -> None:
    # "@127.0.0.1:<other>/x" appended to "http://127.0.0.1:<upstream>" names another host:
    # the user's cookie, identity and assertion would go there. "*" and an absolute URL
    # are no path either: all are a 400, never a 500.
    cookie = f"Cookie: __session={session_cookie('auth0|alice', True)}"
    other = Hits()
    with serve(UPSTREAM) as upstream, sidecar_over_h11(upstream, other) as (port, elsewhere):
        for target in (f"@127.0.0.1:{elsewhere}/internal", "*", "http://evil.example/x"):
            answer = raw_request(port, target, cookie)
            assert answer.startswith(b"HTTP/1.1 400"), (target, answer[:200])
            assert b"the request target is no path" in answer
        handshake = (
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", f"Origin: {SETTINGS.app_base_url}",
        )  # fmt: skip
        refused = raw_request(port, f"@127.0.0.1:{elsewhere}/ws", cookie, *handshake)
        assert not refused.startswith(b"HTTP/1.1 101"), refused[:200]
        # The same cookie on a path goes to the upstream, as ever.
        assert raw_request(port, "/dashboard", cookie).startswith(b"HTTP/1.1 200")
    assert other.count == 0


def test_a_body_whose_length_is_told_two_ways_is_refused() -> None:
    # h11 reads such a body as chunked; handed the Content-Length, an upstream that answers
    # without reading the body waits for bytes, and reads the next request proxied on that
    # pooled connection as this body: what follows it, a request the gate never saw.
    other = Hits()
    with serve(UPSTREAM) as upstream, sidecar_over_h11(upstream, other) as (port, _):
        for framing in (
            "Content-Length: 160\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        ):
            head = f"POST /public/a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall((head + framing).encode())
                answer = connection.recv(65536)
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 411")), (framing, answer[:120])


async def check(headers: list[tuple[str, str]]) -> httpx.Response:
    sidecar = Sidecar(SETTINGS, SidecarOptions())
    transport = httpx.ASGITransport(app=sidecar)
    async with httpx.AsyncClient(transport=transport, base_url=SETTINGS.app_base_url) as client:
        raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
        response = await client.get("/auth/check", headers=raw)
    await sidecar.gate.aclose()
    return response


@pytest.mark.parametrize(
    "headers",
    [
        # The proxy sets X-Original-URI; the client added an X-Forwarded-Uri of its own.
        [("X-Original-URI", "/dashboard"), ("X-Forwarded-Uri", "/public/a")],
        [("X-Forwarded-Uri", "/dashboard"), ("X-Forwarded-Uri", "/public/a")],
        [("X-Forwarded-Uri", "/dashboard"), ("X-Forwarded-Method", "GET"),
         ("X-Forwarded-Method", "OPTIONS")],
        [("X-Forwarded-Uri", "/public/a"), ("X-Forwarded-Host", "app.example"),
         ("X-Forwarded-Host", "evil.example")],
    ],
)  # fmt: skip
def test_a_check_whose_headers_disagree_is_refused(
    headers: list[tuple[str, str]],
) -> None:
    answer = asyncio.run(check([("X-Forwarded-Host", "app.example"), *headers]))
    assert answer.status_code == 400
    assert "disagree" in answer.json()["error_description"]


def test_the_same_word_twice_is_no_disagreement() -> None:
    same: list[tuple[str, str]] = [
        ("X-Forwarded-Uri", "/public/a"),
        ("X-Original-URI", "/public/a"),
    ]
    answer = asyncio.run(check([("X-Forwarded-Host", "app.example"), *same]))
    assert answer.status_code == 200


def test_a_hash_is_part_of_the_path_the_check_decides_on() -> None:
    # nginx's $request_uri keeps a raw "#", and the app gets it: "/public/a#/../../x" is
    # /x to an app that resolves dot segments. Never public for the check.
    for target in ("/public/a#/../../dashboard", "/public/a#/..%2f..%2fdashboard"):
        headers: list[tuple[str, str]] = [
            ("X-Forwarded-Host", "app.example"),
            ("X-Forwarded-Uri", target),
        ]
        assert asyncio.run(check(headers)).status_code == 401, target


# A consented user holding another, unconsented session: Starlette strips cookie names and
# keeps the last of a repeated one; Next.js keeps names as sent, Express and Go the first.
PADDED = ["__session={bob}; __session ={alice}", "__session={bob}; \xa0__session={alice}"]
REPEATED = ["__session={bob}; __session={alice}"]
AMBIGUOUS = PADDED + REPEATED


@pytest.mark.parametrize("shape", AMBIGUOUS)
def test_an_upstream_reads_only_the_session_the_gate_admitted(shape: str) -> None:
    alice, bob = session_cookie("auth0|alice", True), session_cookie("auth0|bob", False)
    header = shape.format(alice=alice, bob=bob) + "; theme=dark"
    with serve(UPSTREAM) as upstream:
        sidecar = Sidecar(SETTINGS, SidecarOptions(upstream=upstream))
        with serve(sidecar) as base:
            seen = httpx.get(f"{base}/x", headers={b"Cookie": header.encode("latin-1")})
    assert seen.status_code == 200
    assert len(seen.headers.get_list("date")) == 1  # the server's, not the upstream's too
    pairs = [pair.strip() for pair in seen.json()["cookie"].split(";")]
    assert pairs == ["theme=dark", f"__session={alice}"]


@pytest.mark.parametrize("shape", REPEATED)
def test_the_check_hands_the_proxy_the_session_it_admitted(shape: str) -> None:
    alice, bob = session_cookie("auth0|alice", True), session_cookie("auth0|bob", False)
    header = shape.format(alice=alice, bob=bob)
    original: list[tuple[str, str]] = [
        ("X-Forwarded-Uri", "/x"),
        ("X-Forwarded-Host", "app.example"),
    ]
    answer = asyncio.run(check([*original, ("Cookie", header)]))
    assert answer.status_code == 200
    assert answer.headers["x-consent-forward-cookie"] == f"__session={alice}"
    # The usual header is left as it is: nothing for the proxy to replace.
    usual = asyncio.run(check([*original, ("Cookie", f"a=1; __session={alice}")]))
    assert usual.status_code == 200 and "x-consent-forward-cookie" not in usual.headers


@pytest.mark.parametrize("shape", PADDED)
def test_the_check_refuses_a_padded_session_name(shape: str) -> None:
    # No browser sends one; a proxy that cannot replace the app's Cookie header (Traefik,
    # Envoy) would hand the app the other session.
    alice, bob = session_cookie("auth0|alice", True), session_cookie("auth0|bob", False)
    original = [("X-Forwarded-Uri", "/x"), ("X-Forwarded-Host", "app.example")]
    answer = asyncio.run(check([*original, ("Cookie", shape.format(alice=alice, bob=bob))]))
    assert answer.status_code == 400 and "padded" in answer.json()["error_description"]


def test_canonical_pairs_only_when_the_header_is_ambiguous() -> None:
    for header in (b"a=1; __session=v; b=2", b"__session__0=x; __session__1=y", b"a=1"):
        assert canonical_session_pairs(session_cookies(header), header) is None
    padded = b"__session =v; a=1"
    assert canonical_session_pairs(session_cookies(padded), padded) == [b"__session=v"]
    # A value Starlette strips is handed over as it read it.
    for spaced in (b"__session= v", b"__session=v\xa0", b"a=1; __session=\xa0v"):
        assert canonical_session_pairs(session_cookies(spaced), spaced) == [b"__session=v"]


def test_a_large_websocket_message_and_an_unreachable_upstream() -> None:
    cookie = f"__session={session_cookie('auth0|alice', True)}"
    headers = {"Cookie": cookie, "Origin": SETTINGS.app_base_url}
    message = "x" * 2_000_000  # past the websockets library's 1 MiB default

    async def round_trip(url: str) -> str:
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            await ws.send(message)
            return str(await asyncio.wait_for(ws.recv(), 10))

    async def refused_status(url: str) -> int:
        try:
            async with websockets.connect(url, additional_headers=headers):
                return 101
        except websockets.InvalidStatus as refused:
            return int(refused.response.status_code)

    with serve(UPSTREAM) as upstream:
        sidecar = Sidecar(SETTINGS, SidecarOptions(upstream=upstream))
        with serve(sidecar) as base:
            assert asyncio.run(round_trip(base.replace("http", "ws") + "/ws")) == message
            # The upstream's own refusal of a handshake is passed on as it answered it.
            refused = asyncio.run(refused_status(base.replace("http", "ws") + "/ws-refused"))
            assert refused == 404
    # The upstream is gone: a 502, as for a request, not a 403 that blames the Origin.
    down = Sidecar(SETTINGS, SidecarOptions(upstream=f"http://127.0.0.1:{free_port()}"))
    with serve(down) as base:
        assert asyncio.run(refused_status(base.replace("http", "ws") + "/ws")) == 502
