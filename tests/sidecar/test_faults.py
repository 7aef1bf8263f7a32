"""The sidecar's faults over real sockets: an upstream that resets mid-body, a client that
goes away mid-upload, and identity headers a client sends twice or oversized."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from consent_middleware import Session, TokenSet
from consent_middleware._session import CookieSessionStore
from consent_middleware.sidecar import Sidecar, SidecarOptions
from tests.conftest import CLAIM, make_settings
from tests.live_server import free_port, serve
from tests.sidecar.test_sidecar import cli_environment


@dataclass
class Seen:
    """What the upstream app saw of each upload: bytes read, and whether it ended whole."""

    uploads: list[tuple[int, bool]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


SEEN = Seen()
STREAM_ENDED = threading.Event()


async def events(request: Request) -> Response:
    """An endless event stream, as a presence or notification feed sends one."""

    async def beat() -> AsyncIterator[bytes]:
        try:
            if "quiet" in request.query_params:
                await asyncio.sleep(60)  # the head goes out, no event yet
            while True:
                yield b"data: beat\n\n"
                await asyncio.sleep(0.05)
        finally:
            STREAM_ENDED.set()

    return StreamingResponse(beat(), media_type="text/event-stream")


async def upload(request: Request) -> Response:
    received, whole = 0, True
    try:
        async for chunk in request.stream():
            received += len(chunk)
    except ClientDisconnect:
        whole = False
    SEEN.uploads.append((received, whole))
    SEEN.done.set()
    return JSONResponse({"received": received})


async def who(request: Request) -> Response:
    return JSONResponse(
        {
            name: request.headers.getlist(name)
            for name in ("x-auth-request-user", "x-consent-assertion", "x-consent-version")
        }
    )


UPSTREAM = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/who", who),
        Route("/events", events, methods=["GET", "POST"]),
    ]
)


@contextmanager
def raw_upstream(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A server on a bare socket, each connection given to ``handle``: the answers no ASGI
    framework will produce on purpose."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def resetting_upstream(*, before_headers: bool) -> AbstractContextManager[int]:
    """Promises 100,000 bytes, sends 1,000 and closes (or closes before any answer)."""

    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        if not before_headers:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.05)
        # RST, not FIN: SO_LINGER 0 aborts the connection.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    return raw_upstream(handle)


def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one request, as a plain HTTP/1.1 server reads them: it knows
    nothing of Expect, and waits for the body it was promised."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    if found:
        while len(body) < int(found.group(1)):
            body += conn.recv(65536)
    elif re.search(rb"(?im)^transfer-encoding: *chunked", head):
        while not body.endswith(b"0\r\n\r\n"):
            body += conn.recv(65536)
    return head, body


@dataclass
class Front:
    base: str
    cookie: str
    sub: str


def session_cookie(base: str) -> tuple[str, str]:
    settings = make_settings(app_base_url=base)
    sub = "auth0|faults"
    claims = {"sub": sub, CLAIM: {"given": True, "version": settings.terms_version}}
    session = Session.from_claims(claims, TokenSet("at", "idt", "rt", int(time.time()) + 600))
    values = asyncio.run(CookieSessionStore(settings).save(session, {}))
    return "; ".join(v.split(b";", 1)[0].decode() for v in values), sub


@contextmanager
def sidecar_in_front_of(upstream: str, timeout: float = 2) -> Iterator[Front]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(app_base_url=base)
    sidecar = Sidecar(settings, SidecarOptions(upstream=upstream, upstream_timeout=timeout))
    with serve(sidecar, port=port, proxy_headers=False):
        cookie, sub = session_cookie(base)
        yield Front(base, cookie, sub)


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(UPSTREAM))
        yield stack.enter_context(sidecar_in_front_of(upstream))


@pytest.fixture(scope="module")
def patient_front() -> Iterator[Front]:
    """A sidecar whose upstream timeout (60 s) cannot be what ends a stream in a test."""
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(UPSTREAM))
        yield stack.enter_context(sidecar_in_front_of(upstream, timeout=60))


@pytest.mark.parametrize("before_headers", [True, False])
def test_an_upstream_reset_is_a_502_or_a_broken_body_never_a_whole_one(
    before_headers: bool,
) -> None:
    with resetting_upstream(before_headers=before_headers) as port:
        with sidecar_in_front_of(f"http://127.0.0.1:{port}") as front:
            headers = {"cookie": front.cookie}
            if before_headers:
                answer = httpx.get(f"{front.base}/x", headers=headers, timeout=5)
                assert answer.status_code == 502 and "could not be reached" in answer.text
            else:
                # The status went out already: the client must see the body cut short.
                with pytest.raises(httpx.RemoteProtocolError):
                    httpx.get(f"{front.base}/x", headers=headers, timeout=5)
            # And the sidecar serves the next request as if nothing happened.
            assert httpx.get(f"{front.base}/ping", timeout=5).text == "ok"


def test_an_upstream_header_too_large_is_a_502_that_says_why_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        big = b"X-Big: " + b"y" * 9000 + b"\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 2\r\n\r\nok")

    with raw_upstream(handle) as port, sidecar_in_front_of(f"http://127.0.0.1:{port}") as front:
        with caplog.at_level(logging.WARNING, logger="consent_middleware.sidecar"):
            answer = httpx.get(f"{front.base}/x?token=t0ps3cret", headers={"cookie": front.cookie})
    assert answer.status_code == 502
    logged = [r.getMessage() for r in caplog.records if r.name == "consent_middleware.sidecar"]
    assert any("too long" in line or "8190" in line for line in logged), logged
    assert not any("t0ps3cret" in line for line in logged)


def test_a_client_gone_mid_upload_never_reaches_the_upstream_whole(front: Front) -> None:
    SEEN.uploads.clear()
    SEEN.done.clear()
    port = int(front.base.rsplit(":", 1)[1])
    total = 8 << 20
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Cookie: {front.cookie}\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        client.sendall(b"y" * (1 << 20))
        time.sleep(0.2)
    assert SEEN.done.wait(10), "the upstream never finished the abandoned upload"
    received, whole = SEEN.uploads[-1]
    assert received < total and not whole
    # The next upload goes through whole.
    answer = httpx.post(
        f"{front.base}/upload", headers={"cookie": front.cookie}, content=b"z" * 1000
    )
    assert answer.json() == {"received": 1000}


@pytest.mark.parametrize(
    ("request_line", "body", "declared", "until", "times"),
    [
        ("GET /events", b"", 0, b"data: beat", 3),
        ("POST /events", b"x" * 100, 100, b"data: beat", 3),
        # The upstream streams before the upload ends, and the client leaves mid-upload.
        ("POST /events", b"x" * 100, 100_000, b"data: beat", 3),
        # A stream quiet until its first event: its head, and nothing after it.
        ("GET /events?quiet=1", b"", 0, b"\r\n\r\n", 1),
    ],
    ids=["get", "post", "mid-upload", "quiet"],
)
def test_a_client_gone_mid_stream_ends_the_upstreams_stream(
    patient_front: Front, request_line: str, body: bytes, declared: int, until: bytes, times: int
) -> None:
    front = patient_front
    # Before, the sidecar kept reading the stream for nobody, its connection to the
    # upstream with it, until it was stopped (and a stop waited for it forever).
    STREAM_ENDED.clear()
    port = int(front.base.rsplit(":", 1)[1])
    length = f"Content-Length: {declared}\r\n" if declared else ""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(
            f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {front.cookie}\r\n".encode()
            + f"{length}\r\n".encode()
            + body
        )
        client.settimeout(5)
        received = b""
        while received.count(until) < times:
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert not STREAM_ENDED.is_set()
    assert STREAM_ENDED.wait(5), "the upstream's stream outlived the client"
    assert httpx.get(f"{front.base}/ping", timeout=5).text == "ok"


def test_a_stop_cuts_an_endless_stream_after_the_shutdown_timeout(tmp_path: Path) -> None:
    # uvicorn's default waits for every request in flight, and an open event stream never
    # ends: a SIGTERM did nothing until the orchestrator killed the process.
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(UPSTREAM))
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
            **cli_environment(f"http://127.0.0.1:{port}"),
            "CONSENT_PUBLIC_PATHS": "/events",
        }
        command = [sys.executable, "-m", "consent_middleware.sidecar", "--port", str(port)]
        log = stack.enter_context((tmp_path / "sidecar.log").open("wb"))
        process = subprocess.Popen(  # noqa: S603 - this interpreter, the package's module
            [*command, "--upstream", upstream, "--shutdown-timeout", "1"],
            env=env,
            stdout=log,
            stderr=log,
        )
        stack.callback(process.kill)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "sidecar.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the sidecar did not start"
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            client.settimeout(10)
            received = b""
            while received.count(b"data: beat") < 2:
                chunk = client.recv(65536)
                assert chunk, received
                received += chunk
            stopping = time.monotonic()
            process.terminate()
            assert process.wait(timeout=10) is not None
            assert time.monotonic() - stopping < 6
            # The client's stream ends (cut, not left hanging on a dead process).
            while chunk := client.recv(65536):
                received += chunk


def test_identity_headers_sent_twice_or_oversized_are_replaced(front: Front) -> None:
    forged = [
        ("X-Auth-Request-User", "admin"),
        ("X-Auth-Request-User", "root"),
        ("x_auth_request_user", "cgi"),
        ("X-Consent-Assertion", "e" * 30_000),
        ("X-Consent-Version", "v999"),
        ("X-Consent-Version", "v998"),
    ]
    answer = httpx.get(f"{front.base}/who", headers=[("cookie", front.cookie), *forged])
    seen = answer.json()
    assert seen["x-auth-request-user"] == [front.sub]
    assert seen["x-consent-version"] == [make_settings().terms_version]
    assert len(seen["x-consent-assertion"]) == 1
    assert len(seen["x-consent-assertion"][0]) < 2000
    # Without a session none of them gets through: the gate answers, not the upstream.
    refused = httpx.get(f"{front.base}/who", headers=forged)
    assert refused.status_code in (302, 303, 307, 401) and "admin" not in refused.text


def test_an_upstream_that_ignores_expect_gets_the_body_all_the_same() -> None:
    # curl sends "Expect: 100-continue" with any body over 1 MB; Python's wsgiref, for
    # one, never answers 100. The sidecar must not wait for it (past every timeout,
    # holding a pooled connection each time).
    def handle(conn: socket.socket) -> None:
        head, body = read_request(conn)
        answer = f"{len(body)} {b'expect' in head.lower()}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    with raw_upstream(handle) as port, sidecar_in_front_of(f"http://127.0.0.1:{port}") as front:
        headers = {"cookie": front.cookie, "expect": "100-continue"}
        answer = httpx.post(f"{front.base}/upload", headers=headers, content=b"a" * 3000, timeout=5)
        assert (answer.status_code, answer.text) == (200, "3000 False")


def test_an_upstream_304_with_a_content_length_ends_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # RFC 9110 8.6: a 304 may carry the Content-Length of the representation it stands
    # for, with no body. Passed on as is, the server waits for those bytes and fails.
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 5\r\n\r\n')

    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(caplog.handler)
    try:
        with raw_upstream(handle) as port, sidecar_in_front_of(f"http://127.0.0.1:{port}") as front:
            answer = httpx.get(f"{front.base}/page", headers={"cookie": front.cookie}, timeout=5)
            assert answer.status_code == 304 and answer.headers["etag"] == '"x"'
            assert "content-length" not in answer.headers
            assert httpx.get(f"{front.base}/ping", timeout=5).text == "ok"
    finally:
        server_log.removeHandler(caplog.handler)
    assert "Exception in ASGI application" not in caplog.text


def test_a_redirect_to_the_upstreams_own_address_becomes_a_path() -> None:
    # An app that builds redirects from the address it listens on (its own idea of its
    # base URL) names a host only the sidecar reaches: nginx's default proxy_redirect
    # turns those into paths, and so does the sidecar. Any other Location stays as sent.
    own: list[str] = []
    answers = {
        "/own": (302, "{own}/next?x=1"),
        "/upper": (302, "{upper}"),
        "/created": (201, "{own}/items/1"),
        "/other-port": (302, "{own}0/x"),
        "/provider": (302, "https://idp.example/authorize?client_id=a"),
        "/path": (303, "/already/a/path"),
        # A path echoed into the URL (a trailing-slash redirect): never another site.
        "/slashes": (301, "{own}//evil.example/x"),
        "/backslash": (301, "{own}/\\evil.example/x"),
    }

    def handle(conn: socket.socket) -> None:
        head, _ = read_request(conn)
        status, location = answers[head.split(b" ")[1].decode()]
        location = location.format(own=own[0], upper=own[0].upper())
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nLocation: {location}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )

    with raw_upstream(handle) as port, sidecar_in_front_of(f"http://127.0.0.1:{port}") as front:
        own.append(f"http://127.0.0.1:{port}")
        seen = {
            path: httpx.get(f"{front.base}{path}", headers={"cookie": front.cookie}, timeout=5)
            for path in answers
        }
    assert {path: (r.status_code, r.headers["location"]) for path, r in seen.items()} == {
        "/own": (302, "/next?x=1"),
        "/upper": (302, "/"),
        "/created": (201, "/items/1"),
        "/other-port": (302, f"http://127.0.0.1:{port}0/x"),
        "/provider": (302, "https://idp.example/authorize?client_id=a"),
        "/path": (303, "/already/a/path"),
        "/slashes": (301, "/evil.example/x"),
        "/backslash": (301, "/evil.example/x"),
    }
