"""Redirect targets taken from requests: same origin only, or not at all."""

from __future__ import annotations

import re
from urllib.parse import unquote, urljoin, urlsplit

# Control characters (CR/LF header injection, tabs browsers strip) and backslashes
# (browsers read "/\evil" as "//evil") are refused outright rather than cleaned up.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_return_to(value: str | None, base_url: str) -> str | None:
    """Resolve ``value`` against the app and return it as an absolute URL of the app's
    own origin (path, query and fragment kept), or None when it points anywhere else."""
    if not value or _FORBIDDEN.search(value) or len(value) > 4096:
        return None
    if value.lstrip().startswith("//"):
        # Browsers read "//host" and "///host" as another host, whatever urljoin thinks.
        return None
    base = urlsplit(base_url)
    target = urlsplit(urljoin(base_url + "/", value.strip()))
    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
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
    url = f"{base.scheme}://{base.netloc}{path}"
    if target.query:
        url += f"?{target.query}"
    if target.fragment:
        url += f"#{target.fragment}"
    return url


def return_to_or_home(value: str | None, base_url: str) -> str:
    return safe_return_to(value, base_url) or f"{base_url}/"
