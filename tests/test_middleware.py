"""ConsentMiddleware called as plain ASGI: cookie fuzzing, the admitted-request cache, lifespan."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from consent_middleware import ConsentMiddleware, Session, TokenSet, _jose
from consent_middleware import _admissions as admissions_module
from consent_middleware._admission_cache import AdmissionCache
from consent_middleware._admissions import USER_SCOPE_KEY
from consent_middleware._cookies import CHUNK_SIZE, session_cookies
from consent_middleware._exceptions import ConsentMiddlewareError, SharedStateError
from consent_middleware._gate import Verdict
from consent_middleware._models import User
from consent_middleware._session import CookieSessionStore, SessionSummary
from tests.conftest import CLAIM, ISSUER, idp, make_settings
from tests.flow import run_lifespan
from tests.keys import SigningKey, id_token_claims

SETTINGS = make_settings()
STORE = CookieSessionStore(SETTINGS)
CONSENTED = {CLAIM: {"given": True, "version": "v2", "date": "2026-01-01T00:00:00Z"}}


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def reads_user(scope: Any, receive: Any, send: Any) -> None:
    user = scope[USER_SCOPE_KEY]
    assert user.claims["sub"] == user.sub and user.consent is not None
    await ok(scope, receive, send)


def cookie_value(claims: dict[str, Any] | None = None, padding: int = 0) -> str:
    session = Session.from_claims(
        {"sub": "auth0|1", **(claims if claims is not None else CONSENTED)},
        TokenSet("at" + "x" * padding, "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    headers = asyncio.run(STORE.save(session, {}))
    pairs = [h.decode().split(";", 1)[0] for h in headers]
    return "; ".join(p for p in pairs if not p.endswith("="))


def call(gate: ConsentMiddleware, cookie: bytes | None) -> tuple[int, dict[bytes, bytes]]:
    headers = [(b"host", b"app.example.com"), (b"accept", b"text/html")]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    scope = {
        "type": "http", "method": "GET", "path": "/private", "raw_path": b"/private",
        "query_string": b"", "headers": headers, "scheme": "https",
        "server": ("app.example.com", 443), "client": ("127.0.0.1", 1), "root_path": "",
    }  # fmt: skip
    started: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)

    asyncio.run(gate(scope, receive, send))
    return started["status"], dict(started["headers"])


GATE = ConsentMiddleware(ok, settings=SETTINGS)
VALID = cookie_value()
BIG = cookie_value(padding=3 * CHUNK_SIZE)


def refused_as_logged_out(cookie: bytes) -> None:
    status, headers = call(GATE, cookie)
    assert status == 307, (status, cookie[:80])
    assert headers[b"location"].startswith(b"/auth/login?returnTo=")


def test_the_fuzz_baseline_is_admitted() -> None:
    # Without this, every fuzz case below could pass for the wrong reason.
    assert call(GATE, VALID.encode())[0] == 200
    assert BIG.count("__session__") >= 4 and call(GATE, BIG.encode())[0] == 200


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_random_cookie_headers(raw: bytes) -> None:
    status, _ = call(GATE, raw)
    assert status == 307


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["__session", "__session__0", "__session__1"]),
    st.text(st.characters(codec="latin-1"), max_size=5000),
)
def test_random_session_values(name: str, value: str) -> None:
    refused_as_logged_out(f"{name}={value}".encode("latin-1"))


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 2))
def test_truncated_cookies(cut: int) -> None:
    refused_as_logged_out(VALID[:cut].encode())


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=len("__session="), max_value=len(VALID) - 1))
def test_flipped_characters(at: int) -> None:
    # Flip the top bit of a base64url digit: always a real bit of the decoded bytes (a low
    # bit of a segment's last digit may be padding, which decodes to the same bytes).
    index = B64.find(VALID[at])
    char = B64[index ^ 32] if index >= 0 else "A"
    tampered = VALID[:at] + char + VALID[at + 1 :]
    refused_as_logged_out(tampered.encode())


def test_other_key_swapped_missing_and_huge_chunks() -> None:
    other = CookieSessionStore(make_settings(secret="o" * 40))
    session = Session.from_claims({"sub": "x", **CONSENTED}, TokenSet("at", "idt", "rt"))
    foreign = asyncio.run(other.save(session, {}))[0].decode().split(";", 1)[0]
    refused_as_logged_out(foreign.encode())
    chunks = dict(pair.split("=", 1) for pair in BIG.split("; "))
    swapped = {
        **chunks,
        "__session__0": chunks["__session__1"],
        "__session__1": chunks["__session__0"],
    }
    refused_as_logged_out("; ".join(f"{k}={v}" for k, v in swapped.items()).encode())
    missing = {k: v for k, v in chunks.items() if k != "__session__2"}
    refused_as_logged_out("; ".join(f"{k}={v}" for k, v in missing.items()).encode())
    refused_as_logged_out(b"__session=" + b"A" * 1_000_000)
    refused_as_logged_out(b"; ".join(b"__session__%d=AAAA" % i for i in range(500)))
    # Well-formed JWE, right key, but not a session inside.
    not_a_session = _jose.encrypt({"hello": "world"}, STORE.keys[0], int(time.time()) + 60)
    refused_as_logged_out(f"__session={not_a_session}".encode())


def test_admitted_requests_are_answered_from_the_cache(decrypts: list[object]) -> None:
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    for _ in range(50):
        status, headers = call(gate, VALID.encode())
        assert status == 200 and b"set-cookie" not in headers  # no roll for a fresh cookie
    assert len(decrypts) == 1


def test_cached_verdicts_are_rechecked_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    assert call(gate, VALID.encode())[0] == 200
    now = time.time()
    clock = [now + admissions_module.REVALIDATE_AFTER / 2]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert call(gate, VALID.encode())[0] == 200
    clock[0] = now + 2 * 86400  # past the cookie's one-day inactivity expiry
    assert call(gate, VALID.encode())[0] == 307


def test_a_cached_session_still_rolls_when_it_falls_due(monkeypatch: pytest.MonkeyPatch) -> None:
    # A six-second inactivity window: a user active every two seconds must never be
    # logged out, so the first request past the roll's due time rolls the cookie, cached
    # admission or not.
    settings = make_settings(inactivity_duration=6, absolute_duration=60)
    gate = ConsentMiddleware(ok, settings=settings)
    store = CookieSessionStore(settings)
    written = time.time()
    tokens = TokenSet("at", "idt", "rt", expires_at=int(written) + 3600)
    session = Session.from_claims({"sub": "auth0|1", **CONSENTED}, tokens)
    value = asyncio.run(store.save(session, {}, now=written))[0].split(b";", 1)[0]
    clock = [written]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert call(gate, value) == (200, {b"vary": b"Cookie"})  # admitted, and cached
    due = store.rolls_at(session_of(store, value))
    assert written < due <= written + 2
    clock[0] = due
    status, headers = call(gate, value)
    assert status == 200 and headers[b"set-cookie"].startswith(b"__session=")


def session_of(store: CookieSessionStore, value: bytes) -> SessionSummary:
    found = store.summary_of(value.split(b"=", 1)[1])
    assert found is not None
    return found[0]


@pytest.mark.parametrize("inactivity", [1, 6, 7, 60, 86400])
@pytest.mark.parametrize("left", [0, 1, 3, 30, 10**6])
def test_a_session_rolls_from_the_moment_said(inactivity: int, left: int) -> None:
    # rolls_at is exactly the first moment needs_roll says yes (inf: never).
    store = CookieSessionStore(
        make_settings(inactivity_duration=inactivity, absolute_duration=10**7)
    )
    expires_at = 1_800_000_000
    session = Session.from_claims({"sub": "u"}, TokenSet("at", "idt"))
    session = replace(session, expires_at=expires_at, created_at=expires_at + left - 10**7)
    due = store.rolls_at(session)
    if due == float("inf"):
        assert not any(store.needs_roll(session, expires_at + t) for t in range(-inactivity, 60))
    else:
        assert store.needs_roll(session, due) and not store.needs_roll(session, due - 0.001)


def test_not_consented_is_never_cached() -> None:
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    old = cookie_value({CLAIM: {"given": True, "version": "v1"}}).encode()
    for _ in range(3):
        status, headers = call(gate, old)
        assert status == 303 and headers[b"location"].startswith(b"/consent?returnTo=")
    assert len(gate._admissions.cache) == 0


@pytest.mark.parametrize("value", [VALID, BIG], ids=["one cookie", "chunked"])
def test_the_full_check_decides_as_of_the_requests_time(value: str) -> None:
    # The whole decision is taken as of one time: the cookie's own expiry included.
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    raw = value.encode()
    key = session_cookies(raw)

    def admitted(now: float) -> Any:
        return asyncio.run(gate._admissions.admit({"headers": [(b"cookie", raw)]}, raw, key, now))

    assert admitted(time.time()).verdict is Verdict.ALLOW
    assert admitted(time.time() + 400 * 86400) is Verdict.LOGIN  # past any expiry


def test_admitted_cache_is_bounded_by_claims_not_tokens() -> None:
    def filled(
        claims: dict[str, Any] | None = None, padding: int = 0, app: ASGIApp = reads_user
    ) -> AdmissionCache:
        gate = ConsentMiddleware(app, settings=SETTINGS)
        gate._admissions.cache = AdmissionCache(8 * one + one // 2)
        for i in range(20):
            value = cookie_value({"n": i, **CONSENTED, **(claims or {})}, padding).encode()
            assert call(gate, value)[0] == 200
        assert gate._admissions.cache.weight <= gate._admissions.cache.max_weight
        return gate._admissions.cache

    probe = ConsentMiddleware(reads_user, settings=SETTINGS)
    assert call(probe, cookie_value({"n": 0, **CONSENTED}).encode())[0] == 200
    one = probe._admissions.cache.weight
    assert len(filled()) == 8
    # Tokens ten times the entry's size: the same entries fit (no entry keeps them).
    assert len(filled(padding=10 * one)) == 8
    # Claims over twice the size: the same bytes hold under half as many.
    assert 1 <= len(filled({"pad": "x" * one})) <= 4
    # One larger than the whole budget is served, just never cached.
    assert len(filled({"pad": "x" * 10 * one})) == 0
    # A route that never reads the user: the entries keep no claims, whatever their size,
    # and the same budget holds more than twice the users.
    assert len(filled({"pad": "x" * 10 * one}, app=ok)) == len(filled(app=ok)) > 16


@pytest.mark.parametrize("value", [VALID, BIG], ids=["one cookie", "chunked"])
def test_a_cached_user_is_read_from_the_cookie_once_a_route_asks(value: str) -> None:
    # An API answering from the cache never reads the user; the first route that does
    # gets the claims from the request's own cookie, and the entry keeps them.
    seen: list[User] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope[USER_SCOPE_KEY])
        await ok(scope, receive, send)

    gate = ConsentMiddleware(app, settings=SETTINGS)
    cookie = value.encode()
    for _ in range(3):
        assert call(gate, cookie)[0] == 200
    (entry,) = gate._admissions.cache._entries.values()
    assert entry.user is None and "not read yet" in repr(seen[-1])
    before = gate._admissions.cache.weight
    user = seen[-1]
    assert user.sub == "auth0|1" and user.email is None and user.name is None
    assert user.consent is not None and user.consent.version == "v2"
    assert dict(user.claims) == {"sub": "auth0|1", **CONSENTED} and user != "auth0|1"
    assert entry.user is not None and entry.user.claims == user.claims
    # Read after its response (here, outside any event loop): the cache is changed only
    # on the loop, when the next request hands the user over.
    assert gate._admissions.cache.weight == before
    assert call(gate, cookie)[0] == 200
    assert seen[-1] is entry.user  # handed over as it is, not read again
    assert gate._admissions.cache.weight > before
    assert "claims=" in repr(seen[-1])
    # Another request handed the user before it was kept reads the kept one.
    assert seen[-3].claims is entry.user.claims


def test_sync_routes_read_users_in_threads_and_the_cache_stays_consistent() -> None:
    # Starlette runs a sync endpoint in a worker thread: its reads of cached users'
    # claims, many at once, never change the cache off the event loop.
    def page(request: Request) -> Response:
        return PlainTextResponse(request.state.user.email or "-")

    async def api(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/page", page), Route("/api", api)])
    gate = ConsentMiddleware(app, settings=SETTINGS)
    cache = gate._admissions.cache
    cookies = [cookie_value({"email": f"u{i}@example.com", **CONSENTED}) for i in range(12)]

    async def visit() -> tuple[int, list[str]]:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="https://app.example.com") as c:
            for value in cookies:
                assert (await c.get("/api", headers={"cookie": value})).status_code == 200
            compact = cache.weight
            pages = [c.get("/page", headers={"cookie": v}) for v in cookies for _ in range(4)]
            answers = await asyncio.gather(*pages)
        return compact, [r.text for r in answers]

    compact, texts = asyncio.run(visit())
    assert sorted(set(texts)) == sorted(f"u{i}@example.com" for i in range(12))
    entries = list(cache._entries.values())
    assert len(entries) == 12 and all(e.user is not None and e.user_weighed for e in entries)
    assert cache.weight == sum(e.weight for e in entries) > compact


def test_a_route_that_reads_the_user_and_fails_still_has_it_weighed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope[USER_SCOPE_KEY].email is None:
            raise RuntimeError("the route failed after reading the user")

    gate = ConsentMiddleware(ok, settings=SETTINGS)
    assert call(gate, VALID.encode())[0] == 200  # cached, its user not read
    cache = gate._admissions.cache
    compact = cache.weight
    gate.app = app
    with pytest.raises(RuntimeError):
        call(gate, VALID.encode())
    (entry,) = cache._entries.values()
    assert entry.user_weighed and cache.weight == entry.weight > compact


def test_a_user_that_cannot_be_read_again_says_so_and_stays_unread() -> None:
    # Only a session other than the admitted one could fail: say so, never an empty user.
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    assert call(gate, VALID.encode())[0] == 200
    (entry,) = gate._admissions.cache._entries.values()
    entry.sid = "another login"
    scope: dict[str, Any] = {}
    key = session_cookies(VALID.encode())
    gate._admissions.hand_over(entry, scope, VALID.encode(), key, time.time())
    user = scope[USER_SCOPE_KEY]
    for _ in range(2):
        with pytest.raises(ConsentMiddlewareError):
            user.claims  # noqa: B018
    assert entry.user is None and user.sub == "auth0|1"


def test_the_admission_cache_takes_the_memory_the_settings_allow() -> None:
    value = cookie_value(CONSENTED).encode()
    sized = ConsentMiddleware(ok, settings=replace(SETTINGS, admission_cache_mb=3))
    assert sized._admissions.cache.max_weight == 3 * 1024 * 1024
    none = ConsentMiddleware(reads_user, settings=replace(SETTINGS, admission_cache_mb=0))
    for _ in range(3):
        # Every request takes the full check, and passes (its user read from the claims
        # the check decoded): nothing is remembered.
        assert call(none, value)[0] == 200
    assert len(none._admissions.cache) == 0
    assert call(sized, value)[0] == 200
    assert len(sized._admissions.cache) == 1


def test_lifespan_shutdown_closes_the_client_it_made() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    async def run(gate: ConsentMiddleware) -> httpx.AsyncClient:
        client = gate.engine.http
        await run_lifespan(gate)
        return client

    assert asyncio.run(run(ConsentMiddleware(app, settings=SETTINGS))).is_closed
    own = httpx.AsyncClient()
    assert asyncio.run(run(ConsentMiddleware(app, settings=SETTINGS, http_client=own))) is own
    assert not own.is_closed  # a client passed in is the caller's to close
    asyncio.run(own.aclose())


class ServerSideStore:
    """A minimal server-side store: the cookie holds only an id."""

    self_contained = False

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        return self.sessions.get(cookies.get("sid", ""))

    async def save(
        self, session: Session, cookies: Mapping[str, str], now: float | None = None
    ) -> list[bytes]:
        self.sessions[session.sid] = session
        return [f"sid={session.sid}; Path=/; HttpOnly".encode()]

    async def clear(self, cookies: Mapping[str, str]) -> list[bytes]:
        self.sessions.pop(cookies.get("sid", ""), None)
        return [b"sid=; Max-Age=0; Path=/"]

    def needs_roll(self, session: Session, now: float | None = None) -> bool:
        return False

    async def delete_by(self, *, sid: str | None = None, sub: str | None = None) -> int:
        ended = [k for k, s in self.sessions.items() if s.sid == sid or s.user["sub"] == sub]
        for key in ended:
            del self.sessions[key]
        return len(ended)


def test_a_server_side_store_ends_sessions_at_once() -> None:
    store = ServerSideStore()
    gate = ConsentMiddleware(ok, settings=SETTINGS, session_store=store)
    session = Session.from_claims(
        {"sub": "auth0|1", **CONSENTED},
        TokenSet("at", "idt", "rt", expires_at=int(time.time()) + 3600),
    )
    session = replace(session, expires_at=int(time.time()) + 3600)
    asyncio.run(store.save(session, {}))
    cookie = f"sid={session.sid}".encode()
    assert call(gate, cookie)[0] == 200
    asyncio.run(
        store.clear({"sid": session.sid})
    )  # logged out elsewhere, same cookie in the browser
    assert call(gate, cookie)[0] == 307


class AwayStore(ServerSideStore):
    """A server-side store whose backend does not answer."""

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        raise SharedStateError("the shared store did not answer: timeout")


def test_a_store_that_is_away_is_a_503_for_pages_apis_and_websockets() -> None:
    gate = ConsentMiddleware(ok, settings=SETTINGS, session_store=AwayStore())
    status, headers = call(gate, b"sid=abc")
    assert status == 503 and headers[b"retry-after"] == b"5"
    assert headers[b"content-type"].startswith(b"text/html")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket", "path": "/ws", "query_string": b"",
        "headers": [(b"cookie", b"sid=abc")],
        "extensions": {"websocket.http.response": {}},
    }  # fmt: skip
    asyncio.run(gate(scope, receive, send))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 503
    assert json.loads(sent[1]["body"]) == {"error": "temporarily_unavailable"}


def test_a_session_whose_claims_nextjs_auth0_filtered_is_read_from_its_id_token(
    signing_key: SigningKey, other_key: SigningKey
) -> None:
    # nextjs-auth0 v4's default filter keeps sub, name, email...: not the consent claim.
    # The gate reads it from the session's own ID token, its signature verified, even
    # though that token's exp has passed (the session's lifetime governs).
    claims = id_token_claims(ISSUER, "client-1", nonce=None, **CONSENTED)
    claims["exp"] = int(time.time()) - 3600

    def cookie(id_token: str) -> bytes:
        session = Session.from_claims(
            {"sub": claims["sub"], "email": "a@b.c"},
            TokenSet("at", id_token, "rt", expires_at=int(time.time()) + 3600),
        )
        return _session_cookie(session).encode()

    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [signing_key])
        gate = ConsentMiddleware(ok, settings=SETTINGS)
        assert call(gate, cookie(signing_key.sign(claims)))[0] == 200
        # The package's own routes decide as the gate does: a token for the browser's
        # code, and no terms form for a user who has accepted them.
        own = TestClient(gate, base_url="https://app.example.com")
        own.headers["cookie"] = cookie(signing_key.sign(claims)).decode()
        token = own.get("/auth/access-token", headers={"sec-fetch-site": "same-origin"})
        assert (token.status_code, token.json()["token"]) == (200, "at")
        assert "already accepted this version" in own.get("/consent").text
        # Signed by a key the provider does not publish: the claim is not believed.
        forged = other_key.sign(claims, kid=signing_key.kid)
        assert call(gate, cookie(forged))[0] == 303
        own.headers["cookie"] = cookie(forged).decode()
        refused = own.get("/auth/access-token", headers={"sec-fetch-site": "same-origin"})
        assert refused.json()["error"] == "consent_required"


def _session_cookie(session: Session) -> str:
    headers = asyncio.run(STORE.save(session, {}))
    return "; ".join(h.decode().split(";", 1)[0] for h in headers)


class RollFailsStore(ServerSideStore):
    """Sessions load, but writing one fails: the shared store went away mid-request."""

    def needs_roll(self, session: Session, now: float | None = None) -> bool:
        return True

    async def save(
        self, session: Session, cookies: Mapping[str, str], now: float | None = None
    ) -> list[bytes]:
        if not self.sessions:
            return await super().save(session, cookies, now)
        raise SharedStateError("the shared store did not answer: timeout")


def test_a_roll_that_cannot_be_written_still_serves_the_page() -> None:
    store = RollFailsStore()
    session = replace(
        Session.from_claims({"sub": "auth0|1", **CONSENTED}, TokenSet("at", "idt", "rt")),
        expires_at=int(time.time()) + 3600,
    )
    asyncio.run(store.save(session, {}))
    gate = ConsentMiddleware(ok, settings=SETTINGS, session_store=store)
    status, headers = call(gate, f"sid={session.sid}".encode())
    assert status == 200 and b"set-cookie" not in headers


@pytest.mark.parametrize(
    "layout",
    [
        "__session={b}; y=x __session={a}",  # inside another cookie's value
        "__session={a}; \xa0__session={b}",  # after a space Starlette strips and the gate must too
        '__session={b}; y="x __session={a}"',
    ],
)
def test_a_consented_session_hidden_in_the_header_does_not_admit_another(layout: str) -> None:
    # The gate reads the session the app will read (Starlette's parser): a consented
    # session tucked where only a naive scan would find it never admits an unconsented one.
    consented = cookie_value()
    unconsented = cookie_value({CLAIM: {"given": True, "version": "v1"}})
    gate = ConsentMiddleware(ok, settings=SETTINGS)
    header = layout.format(a=consented.split("=", 1)[1], b=unconsented.split("=", 1)[1])
    assert call(gate, header.encode("latin-1"))[0] == 303


def test_cors_outside_the_gate_answers_preflights_and_the_gate_the_requests() -> None:
    # As the README places it: a browser's preflight carries no cookie, so CORSMiddleware
    # must answer it before the gate; the request it announces is gated as usual.
    async def items(request: Request) -> Response:
        return PlainTextResponse("items")

    spa = "https://spa.example"
    app = Starlette(
        routes=[Route("/api/items", items, methods=["PUT"])],
        middleware=[
            Middleware(CORSMiddleware, allow_origins=[spa], allow_methods=["PUT"]),
            Middleware(ConsentMiddleware, settings=make_settings()),
        ],
    )
    with TestClient(app, base_url="https://app.example.com") as client:
        preflight = client.options(
            "/api/items", headers={"Origin": spa, "Access-Control-Request-Method": "PUT"}
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == spa
        put = client.put("/api/items", headers={"Origin": spa, "Accept": "application/json"})
        assert put.status_code == 401 and put.json()["error"] == "login_required"
        assert put.headers["access-control-allow-origin"] == spa


def test_a_root_path_that_is_not_app_base_urls_path_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The proxy strips /app but the server was told no root_path: the gate's links lead
    # to the site's root while the provider comes back below /app, and nothing else says.
    prefixed = make_settings(app_base_url="https://app.example.com/app")
    page = {"accept": "text/html"}

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "root_path" in r.getMessage()]

    with caplog.at_level("WARNING", logger="consent_middleware"):
        right = TestClient(ConsentMiddleware(ok, settings=prefixed), root_path="/app")
        assert right.get("/private", headers=page, follow_redirects=False).status_code == 307
        assert right.get("/auth/nope").status_code == 404
        assert warnings() == []
        wrong = TestClient(
            ConsentMiddleware(ok, settings=prefixed), base_url="https://app.example.com"
        )
        for path in ("/private", "/private", "/auth/nope"):
            wrong.get(path, headers=page, follow_redirects=False)
    (warning,) = warnings()
    assert "'' is not APP_BASE_URL's path '/app'" in warning
