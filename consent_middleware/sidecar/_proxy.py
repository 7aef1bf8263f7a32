"""The reverse proxy to the upstream app: bodies streamed both ways, websockets relayed.

aiohttp's client does the HTTP side (a request body from an async generator, the answer
read with ``iter_any``: nothing buffered, a 1 GB upload or an endless event stream flows
through in chunks), the ``websockets`` library the websocket side. Not httpx, which the
package uses for the provider: under 64 concurrent requests its connection pool measured
447 requests/s here against aiohttp's 13,924, and a proxy is nothing but that.

Hop-by-hop headers (RFC 9110 7.6.1), every header the ``Connection`` header names, and any
client-sent copy of the identity headers are dropped.
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

logger = logging.getLogger("consent_middleware.sidecar")

# The largest websocket message relayed from the upstream: uvicorn's own limit for the
# client's side (ws_max_size), so a message one side takes, the other takes too. The
# websockets library's default of 1 MiB would end the relay on a larger one.
WEBSOCKET_MAX_SIZE = 16 * 1024 * 1024

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# What only the sidecar may tell the upstream: a client's copy is always removed. With
# the identity headers oauth2-proxy sets that the sidecar does not: an app moved from it
# may still read them, and must never read a client's.
IDENTITY_HEADERS = frozenset(
    {
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-consent-version",
        b"x-consent-assertion",
        b"x-forwarded-access-token",
        b"x-auth-request-access-token",
        b"x-auth-request-groups",
        b"x-auth-request-preferred-username",
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-groups",
        b"x-forwarded-preferred-username",
        # Authelia's and other SSO proxies' names, which apps behind them read.
        b"remote-user",
        b"remote-email",
        b"remote-groups",
        b"remote-name",
    }
)
# What a proxy in front says of the connection (X-Forwarded-* by prefix, and these): only a
# trusted proxy may say it, and only in the spelling it sends ("-", not "_").
# Frameworks read these too: Symfony and IIS the X-Original-URL / X-Rewrite-URL kind,
# client-IP libraries X-Client-IP and True-Client-IP, some hosts X-Host.
FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-original-uri",
        b"x-original-url",
        b"x-original-host",
        b"x-rewrite-url",
        b"x-host",
    }
)
_FORWARDED_PREFIX = b"x-forwarded-"
# The scheme of the request as HTTP names it: a websocket handshake is an HTTP request.
_HTTP_SCHEMES = {"ws": b"http", "wss": b"https"}

Headers = list[tuple[bytes, bytes]]
# Statuses that never have a body (RFC 9110 15.3.5, 15.4.5).
_NO_BODY = frozenset({204, 304})
# What may follow the upstream's own URL in a Location that points back at it.
_URL_CONTINUES = (b"/", b"?", b"#")
ErrorPage = Callable[[int, Scope], Any]


class ClientDisconnected(Exception):
    """The browser went away mid-upload; the upstream request is abandoned."""


def _without_named(headers: Headers, named: list[bytes]) -> Headers:
    """``headers`` less those ``named`` (comma lists, as a ``Connection`` header names the
    hop-by-hop ones: RFC 9110 7.6.1)."""
    tokens = {token.strip().lower() for value in named for token in value.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in tokens]


def end_to_end(headers: Headers) -> Headers:
    """The headers without hop-by-hop ones, including those ``Connection`` names."""
    kept: Headers = []
    named: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"connection":
            named.append(value)
        elif lowered not in HOP_BY_HOP:
            kept.append((name, value))
    return _without_named(kept, named) if named else kept


def forwarded_headers(scope: Scope, trusted_peer: bool, identity: Headers) -> Headers:
    """Request headers for the upstream: end-to-end only, identity from the sidecar alone,
    ``X-Forwarded-*`` extended (kept from a trusted proxy in front; from anyone else, every
    header of the kind is dropped and For, Proto and Host are the sidecar's own).

    One pass over the headers: this runs on every proxied request."""
    incoming: Headers = scope["headers"]
    named = [value for name, value in incoming if name.lower() == b"connection"]
    if named:
        # What Connection names is for the hop before only (rare: dropped up front).
        incoming = _without_named(incoming, named)
    headers: Headers = []
    earlier: list[bytes] = []
    proto = host = forwarded_host = None
    for name, value in incoming:
        name = name.lower()
        if name in HOP_BY_HOP or name == b"expect":
            # Expect: 100-continue is answered to the client by the server already (it
            # sends 100 once the body is read). Passed on, aiohttp would wait for the
            # upstream's 100, which one that ignores Expect never sends: a request held
            # past every timeout, and its pooled connection with it.
            continue
        # "X_Auth_Request_User" too: CGI-style servers read "_" and "-" alike.
        folded = name.replace(b"_", b"-")
        if folded in IDENTITY_HEADERS:
            continue
        if folded.startswith(_FORWARDED_PREFIX) or folded in FORWARDING:
            if not trusted_peer or folded != name:
                continue
            if name == b"x-forwarded-for":
                earlier.append(value)
                continue
            if name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-host":
                forwarded_host = value
        elif name == b"host":
            host = value
        headers.append((name, value))
    peer = scope.get("consent_middleware.peer") or scope.get("client") or ("", 0)
    chain = b", ".join([*earlier, str(peer[0]).encode()]) if peer[0] else b", ".join(earlier)
    if chain:
        headers.append((b"x-forwarded-for", chain))
    if proto is None:
        scheme = str(scope.get("scheme", "http"))
        headers.append((b"x-forwarded-proto", _HTTP_SCHEMES.get(scheme, scheme.encode())))
    if forwarded_host is None and host:
        headers.append((b"x-forwarded-host", host))
    headers.extend(identity)
    return headers


def relative_locations(headers: Headers, origin: bytes, path: bytes) -> Headers:
    """``headers`` with each ``Location`` that points at the upstream (its ``origin`` in
    lower case and base ``path``: the address the sidecar reaches it on) made a path, as
    nginx's default ``proxy_redirect`` does. An app that builds its redirects from its own
    listening address would otherwise send the browser where only the sidecar can reach; a
    path is a valid Location (RFC 9110 10.2.2) and stays on the public origin."""
    start, end = len(origin), len(origin) + len(path)
    rewritten: Headers = []
    for name, value in headers:
        if (
            name.lower() == b"location"
            # Scheme and host are case-insensitive (RFC 3986 6.2.2.1), the path is not.
            and value[:start].lower() == origin
            and value[start:end] == path
            and (len(value) == end or value[end : end + 1] in _URL_CONTINUES)
        ):
            # One leading slash: "//host" or "/\\host" would be another site to a browser.
            value = b"/" + value[end:].lstrip(b"/\\")
        rewritten.append((name, value))
    return rewritten


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


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
        # Pairs, not a dict: aiohttp builds its own multidict from them, repeats kept.
        request_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        try:
            response = await self.session.request(
                scope["method"],
                # encoded=True: the path goes on exactly as the client sent it.
                URL(self.url(scope), encoded=True),
                headers=request_headers,
                data=_body(receive) if has_body else None,
                allow_redirects=False,
            )
        except ClientDisconnected:
            return
        except TimeoutError:
            await self.error_page(504, scope)(scope, receive, send)
            return
        except aiohttp.ClientError:
            await self.error_page(502, scope)(scope, receive, send)
            return
        try:
            # The server sends its own Date on every answer: the upstream's would be a
            # second one (nginx, too, replaces it).
            response_headers = _without_named(end_to_end(list(response.raw_headers)), [b"date"])
            if response.status in _NO_BODY:
                # RFC 9110 8.6: a 304's Content-Length is the representation's, not of a
                # body it has; the server would wait for those bytes and fail.
                response_headers = _without_named(response_headers, [b"content-length"])
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
            while True:
                chunk = await content.readany()
                # A body that arrived whole (most answers) goes out as one last message,
                # not a chunk and an empty end.
                done = not chunk or content.at_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                if done:
                    break
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
