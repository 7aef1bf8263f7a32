"""The reverse proxy to the upstream app: bodies streamed both ways, websockets relayed.

aiohttp's client does the HTTP side (a request body from an async generator, the answer
read with ``iter_any``: nothing buffered, a 1 GB upload or an endless event stream flows
through in chunks), the ``websockets`` library the websocket side. Not httpx, which the
package uses for the provider: under 64 concurrent requests its connection pool measured
447 requests/s here against aiohttp's 13,924, and a proxy is nothing but that.

What changes in the headers on the way is ``_headers``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import websockets
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from .._middleware import answer_connect
from .._redirects import origin_of
from ._headers import Headers, end_to_end, relative_locations, without_named

logger = logging.getLogger("consent_middleware.sidecar")

# The largest websocket message relayed from the upstream: uvicorn's own limit for the
# client's side (ws_max_size), so a message one side takes, the other takes too. The
# websockets library's default of 1 MiB would end the relay on a larger one.
WEBSOCKET_MAX_SIZE = 16 * 1024 * 1024

# Statuses that never have a body (RFC 9110 15.3.5, 15.4.5).
_NO_BODY = frozenset({204, 304})
ErrorPage = Callable[[int, Scope], Any]


class ClientDisconnected(Exception):
    """The browser went away mid-upload; the upstream request is abandoned."""


class _Client:
    """The client's side of one proxied request. ``receive`` has one reader at a time: the
    request body first (aiohttp sends it on), then a watch for the client going away,
    which uvicorn (ASGI 2.3) tells only through ``receive``: its ``send`` to a closed
    connection returns as if sent, and a stream would go on for nobody."""

    def __init__(self, receive: Receive, has_body: bool) -> None:
        self._receive = receive
        # Set once the body is read to its end, or the client left before that.
        self._body_over = asyncio.Event()
        self._left = False
        if not has_body:
            self._body_over.set()

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                # An upstream may answer (and stream) before the upload ends: the watch
                # must hear of this too.
                self._left = True
                self._body_over.set()
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self._body_over.set()
                return

    async def gone(self) -> None:
        """Returns when the client has gone away."""
        await self._body_over.wait()
        while not self._left:
            # The empty body of a request that had none comes first.
            self._left = (await self._receive())["type"] == "http.disconnect"


async def _send_chunk(content: aiohttp.StreamReader, send: Send) -> bool:
    """Pass on what the upstream has sent so far; True once that was the end."""
    chunk = await content.readany()
    # A body that arrived whole (most answers) goes out as one last message, not a chunk
    # and an empty end.
    done = not chunk or content.at_eof()
    await send({"type": "http.response.body", "body": chunk, "more_body": not done})
    return done


async def _stream(content: aiohttp.StreamReader, send: Send) -> None:
    while not await _send_chunk(content, send):
        pass


async def _stream_while_there(content: aiohttp.StreamReader, send: Send, client: _Client) -> None:
    """The rest of a body that did not come whole, until its end or until the client goes
    away: then the upstream's connection is closed (``release`` of an unread response),
    so its stream ends too, as nginx and Go's reverse proxy end it."""
    pump = asyncio.ensure_future(_stream(content, send))
    watch = asyncio.ensure_future(client.gone())
    try:
        await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this request is cancelled (a shutdown past its grace): neither task
        # outlives it.
        pump.cancel()
        watch.cancel()
        await asyncio.wait((pump, watch))
    if not watch.cancelled():
        watch.exception()  # the client went away (retrieved: nothing to report)
    if not pump.cancelled():
        pump.result()  # the upstream's failure, if it failed, for the caller to handle


class Upstream:
    def __init__(self, base_url: str, timeout: float, error_page: ErrorPage) -> None:
        self.base_url = base_url.rstrip("/")
        # The assertion's audience: who the upstream is, by origin.
        self.origin = origin_of(self.base_url)
        # Where the upstream's own redirects point when they name its address.
        self._own_url = (self.origin.lower().encode(), self.base_url[len(self.origin) :].encode())
        self.timeout = timeout
        self.error_page = error_page
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the server's event loop: one pool for every request.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self.timeout),
                # A proxy passes bodies and headers through as they are: no decompression,
                # no cookie jar, no default headers of its own.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, scope: Scope, websocket: bool = False) -> str:
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        base = self.base_url
        if websocket:
            base = "ws" + base[4:] if base.startswith("http") else base
        return base + path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")

    async def http(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        framing = (b"content-length", b"transfer-encoding")
        has_body = any(n in framing for n, _ in scope["headers"])
        client = _Client(receive, has_body)
        # Pairs, not a dict: aiohttp builds its own multidict from them, repeats kept.
        request_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        try:
            response = await self.session.request(
                scope["method"],
                # encoded=True: the path goes on exactly as the client sent it.
                URL(self.url(scope), encoded=True),
                headers=request_headers,
                data=client.body() if has_body else None,
                allow_redirects=False,
            )
        except ClientDisconnected:
            return
        except TimeoutError:
            await self.error_page(504, scope)(scope, receive, send)
            return
        except aiohttp.ClientError as exc:
            # Said to the operator (a header over aiohttp's 8 KB, a refused connection),
            # never the URL, whose query may carry a credential.
            reason = exc.message if isinstance(exc, aiohttp.ClientResponseError) else ""
            logger.warning("upstream failed: %s %s", type(exc).__name__, reason)
            await self.error_page(502, scope)(scope, receive, send)
            return
        try:
            # The server sends its own Date on every answer: the upstream's would be a
            # second one (nginx, too, replaces it).
            response_headers = without_named(end_to_end(list(response.raw_headers)), [b"date"])
            if response.status in _NO_BODY:
                # RFC 9110 8.6: a 304's Content-Length is the representation's, not of a
                # body it has; the server would wait for those bytes and fail.
                response_headers = without_named(response_headers, [b"content-length"])
            elif 300 <= response.status < 400 or response.status == 201:
                response_headers = relative_locations(response_headers, *self._own_url)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers,
                }
            )
            content = response.content
            arrived = content.read_nowait()
            if content.at_eof():
                # Most answers arrive whole with their headers: out at once, as one last
                # message, with no watch and no task.
                await send({"type": "http.response.body", "body": arrived, "more_body": False})
            else:
                # The rest may be long in coming (an event stream waiting for its first
                # event): watched from here on.
                if arrived:
                    await send({"type": "http.response.body", "body": arrived, "more_body": True})
                await _stream_while_there(content, send, client)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status is sent already: all that is left is to stop, which the server
            # turns into a closed connection, so the client sees a broken body, not a
            # truncated one passed off as whole.
            logger.warning("upstream failed mid-response: %s", type(exc).__name__)
        finally:
            response.release()

    async def websocket(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        subprotocols = list(scope.get("subprotocols") or [])
        skip = {b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-protocol",
                b"sec-websocket-extensions", b"content-length"}  # fmt: skip
        extra = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers if n not in skip]
        try:
            upstream = await websockets.connect(
                self.url(scope, websocket=True),
                additional_headers=extra,
                subprotocols=[websockets.Subprotocol(p) for p in subprotocols] or None,
                open_timeout=10,
                max_size=WEBSOCKET_MAX_SIZE,
            )
        except websockets.InvalidStatus as refused:
            # The upstream answered the handshake itself (401, 404, ...): its answer.
            answer = refused.response
            kind = answer.headers.get("Content-Type")
            await answer_connect(
                scope,
                receive,
                send,
                Response(bytes(answer.body), answer.status_code, media_type=kind),
            )
            return
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            # A 502, as for a request: not the 403 a close before accepting would become.
            logger.warning("upstream websocket failed: %s", type(exc).__name__)
            await answer_connect(scope, receive, send, self.error_page(502, scope))
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        async with upstream:
            await _relay(receive, send, upstream)


async def _relay(receive: Receive, send: Send, upstream: Any) -> None:
    async def from_client() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(message.get("code", 1000))
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            if data is not None:
                await upstream.send(data)

    async def from_upstream() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for data in upstream:
                key = "text" if isinstance(data, str) else "bytes"
                await send({"type": "websocket.send", key: data})
        await send({"type": "websocket.close", "code": upstream.close_code or 1000})

    tasks = [asyncio.ensure_future(from_client()), asyncio.ensure_future(from_upstream())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        # Either side going away ends the relay (the server's send to a browser that left
        # raises): read, so it is not reported later as an error nobody retrieved.
        error = task.exception()
        if error is not None:
            logger.debug("websocket relay ended: %s", type(error).__name__)
