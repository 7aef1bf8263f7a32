"""The gate's decision for one request, and the answers it gives when it says no."""

from __future__ import annotations

import enum
import re
import string
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Scope

from ._config import Settings
from ._models import NO_PURPOSES, Consent
from ._redirects import returnable
from ._session import Session


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"
    CONSENT = "consent"
    #: The terms are accepted, but this path needs an optional purpose that is not given.
    PURPOSE = "purpose"


def decide(session: Session | None, settings: Settings) -> Verdict:
    if session is None:
        return Verdict.LOGIN
    return verdict_for(Consent.from_claim(session.user.get(settings.consent_claim)), settings)


def verdict_for(consent: Consent | None, settings: Settings) -> Verdict:
    """The terms' verdict for a signed-in user's parsed consent claim."""
    if consent is None or not consent.covers(settings.terms_version):
        return Verdict.CONSENT
    return Verdict.ALLOW


def judged(consent: Consent | None, settings: Settings) -> tuple[Verdict, frozenset[str]]:
    """The verdict on a signed-in user's parsed consent claim, and the optional purposes
    it gives for their current versions (only asked for with CONSENT_REQUIRE): one parse
    of the claim serves both."""
    verdict = verdict_for(consent, settings)
    if not settings.require or consent is None:
        return verdict, NO_PURPOSES
    return verdict, consent.given_purposes(settings.purposes)


def judged_claim(claim: object, settings: Settings) -> tuple[Verdict, frozenset[str]]:
    """``judged`` for the consent claim as decoded. The usual claim (a JSON object, no
    purposes asked for) is read in place, exactly as ``Consent.covers`` reads it, with no
    ``Consent`` built: this runs for every user the gate has not seen recently."""
    if type(claim) is not dict or settings.require:
        return judged(Consent.from_claim(claim), settings)
    version = claim.get("version")
    covered = (
        claim.get("given") is True
        and claim.get("withdrawn") is not True
        and version is not None
        and str(version) == settings.terms_version
    )
    return (Verdict.ALLOW if covered else Verdict.CONSENT), NO_PURPOSES


def missing_purposes(
    path: str, given: frozenset[str], settings: Settings, sent: str | None = None
) -> tuple[str, ...]:
    """The purposes ``path`` needs (CONSENT_REQUIRE) that are not in ``given``. A
    requirement fails closed: it is matched on the path and on every way a server may
    read it (``path_spellings``, with ``sent`` the path as the client spelled it), without
    regard to case or a trailing slash (Express routes "/Newsletter/" to "/newsletter" by
    default), so no spelling of a path escapes it."""
    missing: list[str] = []
    spellings = {spelling.lower() for spelling in path_spellings(path, sent)}
    for pattern, ids in settings.require:
        if any(_requires(spelling, pattern.lower()) for spelling in spellings):
            missing += [i for i in ids if i not in given and i not in missing]
    return tuple(missing)


def _requires(path: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    # Path parameters (";jsessionid=...") and trailing slashes, dots, spaces or
    # backslashes are dropped by one server or another before it routes.
    return path.split(";", 1)[0].rstrip("/. \\") == pattern.rstrip("/")


def app_path(scope: Scope) -> str:
    """The path below where the app is mounted (``root_path``), which is what settings name.

    Servers disagree on whether ``path`` holds ``root_path``: uvicorn's ``--root-path``
    and Starlette's ``Mount`` put it there (as the ASGI spec asks), ``FastAPI(root_path=)``
    behind a proxy that strips the prefix does not. Read as Starlette's router reads it
    (``starlette._utils.get_route_path``): the prefix counts only as whole segments, so
    "/application" is no path below "/app"."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


# What a return address keeps as sent: RFC 3986's path and query characters, escapes included.
_PATH_CHARACTERS = "/:@!$&'()*+,;=-._~"
_SENT_CHARACTERS = _PATH_CHARACTERS + "%"


def requested_target(scope: Scope) -> str:
    """The path and query the client asked for, as it spelled them, from the site's root:
    a return address must bring the browser back to that very URL, and the decoded path
    would not ("%2F" would become a segment, "%3F" a query). The server's ``raw_path``
    when it spells the decoded ``path``, else the path escaped again; bytes outside URL
    syntax are escaped. A ``root_path`` the server left out of ``path`` (``FastAPI(
    root_path=)`` behind a proxy that strips it) is put in front: without it, the user
    would land outside the app after signing in."""
    path: str = scope["path"]
    raw = scope.get("raw_path")
    sent = raw.decode("latin-1") if isinstance(raw, bytes) else None
    if sent is not None and unquote(sent) == path:
        target = quote(sent, safe=_SENT_CHARACTERS)
    else:
        target = quote(path, safe=_PATH_CHARACTERS)
    root: str = scope.get("root_path", "").rstrip("/")
    if root and app_path(scope) == path and path != root:
        target = quote(root, safe=_PATH_CHARACTERS) + target
    query: bytes = scope.get("query_string", b"")
    return f"{target}?{quote(query, safe=_SENT_CHARACTERS + '?')}" if query else target


def sent_path(scope: Scope) -> str | None:
    """The path below ``root_path`` as the client spelled it, escapes kept (the server's
    ``raw_path``), or None when the server does not say."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    sent = raw.decode("latin-1")
    root: str = scope.get("root_path", "").rstrip("/")
    if root:
        # The mount's own segments, however the client escaped them.
        segments = sent.split("/")
        depth = root.count("/") + 1
        if unquote("/".join(segments[:depth])) == root:
            return "/" + "/".join(segments[depth:])
    return sent


def path_spellings(path: str, sent: str | None = None) -> set[str]:
    """``path`` (decoded, as the ASGI server routes it) and as each kind of server may
    read it before it routes: repeated slashes merged and dot segments resolved (RFC 3986
    5.2.4: "/static/../admin" and "//admin" are "/admin"), as it is and decoded up to
    twice more, dots resolved between or not (nginx's ``$uri`` is decoded once and
    resolved, the app behind it may decode again); then also with each segment's path
    parameters dropped (Tomcat, Jetty and Spring read "/static/..;/admin" as
    "/static/../admin") and with backslashes as slashes (IIS, and others on Windows).

    With ``sent``, the path as the client spelled it, also as servers read it that split
    it before they decode: WHATWG URL (Node, Deno, Bun) resolves dot segments, "%2e" ones
    too, between the sent slashes only, so "/static/a%2fb/../../admin" is "/admin" there,
    though "/static/admin" once decoded; Tomcat drops path parameters from the sent
    segments. ``sent`` itself counts when it escapes a character that never needs it: a
    server that never decodes routes "/%73tatic" elsewhere than "/static", while "%20"
    or "%C3%A9" are only how browsers send a space or an "é"."""
    if (
        (sent is None or sent == path)
        and path.startswith("/")
        and not any(mark in path for mark in _READ_ALIKE)
    ):
        # Nothing any server reads another way (no escape, backslash, parameter, empty or
        # dot segment): every form below is the path itself. Asked on every gated request
        # with CONSENT_REQUIRE, where the full reading costs several microseconds.
        return {path}
    return _every_spelling(path, sent)


def _every_spelling(path: str, sent: str | None) -> set[str]:
    spellings = {path}
    # A chain of servers may each decode, with or without resolving dots first: twice
    # more than the ASGI server did, each way (paths without escapes stay one form).
    forms = {path}
    for _ in range(_DECODINGS):
        forms |= {unquote(p) for form in forms for p in (form, _resolved(form))}
    for form in forms:
        for spelled in (form, form.replace("\\", "/")):
            spellings.add(_resolved(spelled))
            spellings.add(_resolved(_without_parameters(spelled)))
    if sent is not None and sent != path:
        if any(chr(int(escaped, 16)) in _STRUCTURAL for escaped in _ESCAPE.findall(sent)):
            spellings.add(sent)
        for form in (sent, sent.replace("\\", "/")):
            spellings.add(unquote(_resolved(_dots_unescaped(form))))
            spellings.add(unquote(_resolved(_dots_unescaped(_without_parameters(form)))))
    return spellings


_DECODINGS = 2
# Without any of these, a path reads the same to every server ``path_spellings`` knows.
_READ_ALIKE = ("%", "\\", ";", "//", "/.")
# An escape in a path as sent, and the characters whose escaping changes how a server
# that never decodes routes it (RFC 3986 2.3's unreserved ones, and the separators).
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_STRUCTURAL = frozenset(string.ascii_letters + string.digits + "-._~/;\\%")


# Dot segments as WHATWG URL reads them in a path as sent.
_ESCAPED_DOTS = {"%2e": ".", ".%2e": "..", "%2e.": "..", "%2e%2e": ".."}


def _dots_unescaped(sent: str) -> str:
    return "/".join(_ESCAPED_DOTS.get(segment.lower(), segment) for segment in sent.split("/"))


def _without_parameters(path: str) -> str:
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def _resolved(decoded: str) -> str:
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    trailing = "/" if decoded.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


def is_own_route(path: str, settings: Settings) -> bool:
    """The auth and consent routes, which the middleware serves itself."""
    prefixes = (settings.routes_prefix, settings.consent_path)
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def is_public(path: str, settings: Settings, sent: str | None = None) -> bool:
    """Configured public paths: exact ("/about"), or a prefix when they end in "*"."""
    return matches_every_spelling(path, settings.public_paths, sent)


def matches_every_spelling(path: str, patterns: tuple[str, ...], sent: str | None = None) -> bool:
    """Whether ``path`` and every way a server may read it (``path_spellings``, with
    ``sent`` the path as the client spelled it) are among ``patterns``: what lets a
    request by the gate fails closed."""
    return matches(path, patterns) and all(
        matches(spelling, patterns) for spelling in path_spellings(path, sent)
    )


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``patterns``: exact, or a prefix when it ends in "*"."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


# What a browser fetches as a page (Fetch's navigation request destinations): anything else
# it fetches on a page's behalf (an image, a script, a favicon) cannot show a login.
_PAGE_DESTINATIONS = frozenset({"document", "iframe", "frame", "embed", "object"})


def wants_json(path: str, headers: Headers, settings: Settings) -> bool:
    """True for fetch/XHR and API clients, which must never get an HTML redirect; and for a
    page's subresources (``Sec-Fetch-Dest: image``, ``script``, ...): redirected, a
    signed-out browser's favicon would start a sign-in at the provider nobody sees."""
    if any(path == p or path.startswith(p.rstrip("/") + "/") for p in settings.api_prefixes):
        return True
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return True
    # application/json, or any type with RFC 6839's +json suffix (application/vnd.api+json,
    # application/problem+json), asked for without HTML.
    accept = headers.get("accept", "").lower()
    if ("/json" in accept or "+json" in accept) and "text/html" not in accept:
        return True
    # Browsers mark their own navigations; anything else they send is fetch (an API call)
    # or a subresource.
    mode = headers.get("sec-fetch-mode")
    dest = headers.get("sec-fetch-dest")
    return (
        mode is not None
        and mode != "navigate"
        and dest is not None
        and (dest not in _PAGE_DESTINATIONS)
    )


def refusal_url(
    verdict: Verdict,
    return_to: str,
    settings: Settings,
    root_path: str = "",
    purposes: tuple[str, ...] = (),
) -> str:
    """Where a refused request is sent: the login, the terms page, or the page asking for
    the missing purposes, keeping its URL."""
    # A long query (a search, say) is dropped rather than refused at /auth/login: the user
    # still lands on the page they asked for, and the login's cookie stays small.
    query = {"returnTo": returnable(return_to, settings.app_base_url)}
    if verdict is Verdict.LOGIN:
        target = f"{settings.routes_prefix}/login"
    elif verdict is Verdict.PURPOSE:
        target = f"{settings.consent_path}/purposes"
        query = {"need": "+".join(purposes), **query}
    else:
        target = settings.consent_path
    return f"{root_path}{target}?{urlencode(query)}"


def refusal_body(
    verdict: Verdict, return_to: str, settings: Settings, purposes: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    """The JSON an API client gets instead of a redirect: status and body."""
    url = settings.app_base_url + refusal_url(verdict, return_to, settings, "", purposes)
    return refusal_json(verdict, url, purposes)


def refusal_json(
    verdict: Verdict, url: str, purposes: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    """``refusal_body`` for the absolute ``url`` the refused request is sent to."""
    if verdict is Verdict.LOGIN:
        return 401, {"error": "login_required", "login_url": url}
    if verdict is Verdict.PURPOSE:
        return 403, {"error": "consent_required", "purposes": list(purposes), "consent_url": url}
    return 403, {"error": "consent_required", "consent_url": url}


# A refusal depends on the cookie, as the page it stands for: no cache may keep it for
# another visitor, nor for this one once signed in.
_REFUSAL_HEADERS = {"Cache-Control": "no-store", "Vary": "Cookie"}


def refusal(
    verdict: Verdict,
    method: str,
    return_to: str,
    as_json: bool,
    settings: Settings,
    root_path: str = "",
    purposes: tuple[str, ...] = (),
) -> Response:
    headers = _REFUSAL_HEADERS
    if as_json:
        status, body = refusal_body(verdict, return_to, settings, purposes)
        return JSONResponse(body, status_code=status, headers=headers)
    url = refusal_url(verdict, return_to, settings, root_path, purposes)
    if verdict is Verdict.LOGIN:
        # 307 keeps the method, which only makes sense for GET/HEAD.
        status = 307 if method in ("GET", "HEAD") else 303
        return RedirectResponse(url, status_code=status, headers=headers)
    return RedirectResponse(url, status_code=303, headers=headers)
