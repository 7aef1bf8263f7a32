"""What a proxy in front says of the request it holds: the original request a forward-auth
check asks about, and the kinds of request the sidecar treats apart (CORS preflights,
websocket handshakes)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from .._pages import NO_STORE


def is_preflight(method: str, headers: Headers) -> bool:
    """A CORS preflight (Fetch, "CORS-preflight request"): what a browser asks before a
    cross-origin request that is not simple, never with credentials or a body. Anything
    carrying either is no preflight, and is gated: an upstream that reads the session
    itself would otherwise take it as the user's. (A forward-auth check is asked without
    the body: there, only the credentials tell.)"""
    return (
        method == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
        and "cookie" not in headers
        and "authorization" not in headers
        and "transfer-encoding" not in headers
        and headers.get("content-length", "0") == "0"
    )


def is_origin_form(scope: Scope) -> bool:
    """Whether the request target is a path (RFC 9112 3.2.1's origin-form), what the gate
    decides on and the proxy appends to the upstream's address. An HTTP/1.1 server may hand
    over the target as the client wrote it: "*", an absolute URL, or "@host/x"."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw[:1] != b"/":
        return False
    return str(scope["path"])[:1] == "/"


def has_ambiguous_framing(scope: Scope) -> bool:
    """Whether the request's length is told two ways: ``Transfer-Encoding`` beside
    ``Content-Length``, or two different ``Content-Length`` values. A server may read the
    body one way (h11 takes the chunks) while the upstream, handed the other, waits for
    bytes that never come and reads the next request on the pooled connection as this
    body: a request smuggled past the gate (RFC 9112 6.3 has intermediaries refuse or
    repair such a message)."""
    lengths = {value.strip() for name, value in scope["headers"] if name == b"content-length"}
    chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
    return len(lengths) > 1 or (chunked and bool(lengths))


def is_websocket_handshake(headers: Headers) -> bool:
    """A websocket opening handshake (RFC 6455 4.1). ``Sec-WebSocket-Key`` is end-to-end,
    so it reaches the check even where a proxy drops ``Upgrade`` as hop-by-hop."""
    return "sec-websocket-key" in headers or headers.get("upgrade", "").lower() == "websocket"


# What names the original request, each under the names it may come by.
_SAID_TWICE = (
    ("X-Forwarded-Uri / X-Original-URI", ("x-forwarded-uri", "x-original-uri")),
    ("X-Forwarded-Method", ("x-forwarded-method",)),
    ("X-Forwarded-Host", ("x-forwarded-host",)),
    ("X-Forwarded-Proto", ("x-forwarded-proto",)),
)


def _values(headers: Headers, names: tuple[str, ...]) -> set[str]:
    return {value for name in names for value in headers.getlist(name)}


def original_request(request: Request, check_path: str) -> tuple[str, str, str] | Response:
    """(method, path + query, origin) of the request the proxy is asking about.

    nginx, Caddy and Traefik send it in ``X-Forwarded-*`` / ``X-Original-URI`` headers; Envoy's
    HTTP ``ext_authz`` sends the original method and path on the check request itself, after
    its ``path_prefix`` (the check path).
    """
    headers = Headers(scope=request.scope)
    # The proxy passes the client's own headers on to the check: one it does not set
    # itself may be the client's. Two that disagree (the proxy's X-Original-URI beside a
    # client's X-Forwarded-Uri, or a copy of either) cannot be told apart: refused.
    conflicting = [label for label, names in _SAID_TWICE if len(_values(headers, names)) > 1]
    if conflicting:
        body = {
            "error": "invalid_request",
            "error_description": "the check's headers disagree: "
            + ", ".join(conflicting)
            + " (the proxy must set one and clear any other)",
        }
        return JSONResponse(body, status_code=400, headers=NO_STORE)
    target = headers.get("x-forwarded-uri") or headers.get("x-original-uri")
    method = headers.get("x-forwarded-method")
    # As sent (escapes kept), as the X-Forwarded-Uri of the other proxies: the gate
    # reads every spelling of it.
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
    if target is None and path.startswith(check_path + "/"):
        # Envoy: /auth/check/<original path>?<original query>
        target = path[len(check_path) :]
        query = request.url.query
        target += f"?{query}" if query else ""
        method = method or request.method
    missing = []
    if not target:
        missing.append("X-Forwarded-Uri (or X-Original-URI)")
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not host:
        missing.append("X-Forwarded-Host")
    if missing or target is None or host is None:
        body = {
            "error": "invalid_request",
            "error_description": "the check names no original request: missing "
            + ", ".join(missing),
        }
        return JSONResponse(body, status_code=400, headers=NO_STORE)
    if not target.startswith("/"):
        target = "/" + target
    proto = headers.get("x-forwarded-proto") or request.url.scheme
    return method or "GET", target, f"{proto}://{host}"
