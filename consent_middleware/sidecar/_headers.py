"""What the sidecar changes in the headers it passes on, each way.

Hop-by-hop headers (RFC 9110 7.6.1), every header the ``Connection`` header names, and any
client-sent copy of the identity headers are dropped; ``X-Forwarded-*`` are the sidecar's
own unless a trusted proxy sent them; an upstream's redirects to its own address become
paths on the public origin.
"""

from __future__ import annotations

from starlette.types import Scope

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
# What may follow the upstream's own URL in a Location that points back at it.
_URL_CONTINUES = (b"/", b"?", b"#")


def without_named(headers: Headers, named: list[bytes]) -> Headers:
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
    return without_named(kept, named) if named else kept


def forwarded_headers(scope: Scope, trusted_peer: bool, identity: Headers) -> Headers:
    """Request headers for the upstream: end-to-end only, identity from the sidecar alone,
    ``X-Forwarded-*`` extended (kept from a trusted proxy in front; from anyone else, every
    header of the kind is dropped and For, Proto and Host are the sidecar's own).

    One pass over the headers: this runs on every proxied request."""
    incoming: Headers = scope["headers"]
    named = [value for name, value in incoming if name.lower() == b"connection"]
    if named:
        # What Connection names is for the hop before only (rare: dropped up front).
        incoming = without_named(incoming, named)
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
