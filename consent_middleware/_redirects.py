"""Redirect targets taken from requests: same origin only, or not at all."""

from __future__ import annotations

import re
from urllib.parse import unquote, urljoin, urlsplit

# Control characters (CR/LF header injection, tabs browsers strip) and backslashes
# (browsers read "/\evil" as "//evil") are refused outright rather than cleaned up.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# A return address is kept in the login transaction's cookie, and every cookie the browser
# holds for the app travels in each request's ``Cookie`` header, which nginx and Apache cap
# at 8 KB by default (RFC 6265 6.1 only promises 4 KB per cookie). So the part of the
# address after the origin (path, query and fragment) is bounded to this many characters.
MAX_RETURN_TO = 1024


def safe_return_to(value: str | None, base_url: str) -> str | None:
    """Resolve ``value`` against the app and return it as an absolute URL of the app's
    own origin (path, query and fragment kept), or None when it points anywhere else or
    is longer than ``MAX_RETURN_TO`` after the origin."""
    if not value or _FORBIDDEN.search(value) or len(value) > len(base_url) + MAX_RETURN_TO:
        return None
    if value.lstrip().startswith("//"):
        # Browsers read "//host" and "///host" as another host, whatever urljoin thinks.
        return None
    base = urlsplit(base_url)
    target = urlsplit(urljoin(base_url + "/", value.strip()))
    if (target.scheme, target.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return None
    if target.username or target.password:
        return None
    path = target.path or "/"
    # Refuse the percent-encoded forms too ("/%2F%2Fevil", "/%5Cevil", "%0d%0a"): a proxy
    # or framework that decodes the path before redirecting would turn them into the real
    # thing. Encoded slashes further in ("/files/a%2Fb") stay allowed.
    decoded = unquote(path)
    if path.startswith("//") or decoded.startswith("//") or _FORBIDDEN.search(decoded):
        return None
    relative = path
    if target.query:
        relative += f"?{target.query}"
    if target.fragment:
        relative += f"#{target.fragment}"
    if len(relative) > MAX_RETURN_TO:
        return None
    return f"{base.scheme}://{base.netloc}{relative}"


def bounded_return_to(url: str) -> str:
    """``url``, an address of the app (absolute, or a path with its query), cut to fit
    ``MAX_RETURN_TO``: whole when its path, query and fragment fit, else its path alone,
    else the root. For addresses the package builds itself, where landing on the right
    page without its query beats an error page."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme else ""
    if len(url) - len(origin) <= MAX_RETURN_TO:
        return url
    return origin + (parts.path if len(parts.path) <= MAX_RETURN_TO else "/")


def returnable(url: str, base_url: str) -> str:
    """``bounded_return_to(url)`` when ``/auth/login`` will follow it back, else the app's
    home: the address of a refused request may be one the login refuses ("//host", a
    backslash, a control character), and the user would end at an error page instead of
    signing in."""
    bounded = bounded_return_to(url)
    return bounded if safe_return_to(bounded, base_url) is not None else f"{base_url}/"


def return_to_or_home(value: str | None, base_url: str) -> str:
    return safe_return_to(value, base_url) or f"{base_url}/"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (RFC 6454), as an ``Origin`` header names it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
