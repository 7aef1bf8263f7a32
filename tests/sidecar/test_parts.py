"""The sidecar's parts one at a time: options, the assertion key, headers, the check."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import MutableMapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt
from starlette.requests import Request

from consent_middleware import ConfigurationError
from consent_middleware.sidecar import SidecarOptions
from consent_middleware.sidecar._assertion import AssertionSigner
from consent_middleware.sidecar._headers import end_to_end, forwarded_headers
from consent_middleware.sidecar._proxy import _relay
from consent_middleware.sidecar._requests import original_request
from consent_middleware.sidecar._upstream_cookies import with_new_session

SECRET = "s" * 40


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_the_assertion_key_from_pem_jwk_or_the_secret() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    from_pem = AssertionSigner.from_setting(pem(key), SECRET)
    token = from_pem.sign("https://app", "https://up", {"sub": "u"})
    assert jwt.decode(token, from_pem.jwks(), algorithms=["ES256"], audience="https://up")
    numbers = key.private_numbers()

    def b64(value: int) -> str:
        import base64

        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    private_jwk = {**from_pem.public_jwk, "d": b64(numbers.private_value)}
    from_jwk = AssertionSigner.from_setting(json.dumps(private_jwk), SECRET)
    assert from_jwk.kid == from_pem.kid  # the thumbprint names the key, whatever its form
    # Derived: the same secret gives the same key (every worker, every restart).
    assert (
        AssertionSigner.from_setting("", SECRET).kid == AssertionSigner.from_setting("", SECRET).kid
    )
    assert (
        AssertionSigner.from_setting("", SECRET).kid
        != AssertionSigner.from_setting("", "t" * 40).kid
    )


@pytest.mark.parametrize(
    "value",
    ["not a key", '{"kty": "EC"}', pem(ec.generate_private_key(ec.SECP384R1()))],
    ids=["garbage", "incomplete-jwk", "wrong-curve"],
)
def test_a_bad_assertion_key_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSENT_ASSERTION_KEY"):
        AssertionSigner.from_setting(value, SECRET)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONSENT_UPSTREAM": "ftp://x"}, "CONSENT_UPSTREAM"),
        ({"CONSENT_SIDECAR_PORT": "70000"}, "CONSENT_SIDECAR_PORT"),
        ({"CONSENT_SIDECAR_PORT": "eighty"}, "CONSENT_SIDECAR_PORT"),
        ({"CONSENT_SIDECAR_WORKERS": "0"}, "CONSENT_SIDECAR_WORKERS"),
        ({"CONSENT_UPSTREAM_TIMEOUT": "0"}, "CONSENT_UPSTREAM_TIMEOUT"),
        ({"CONSENT_SHUTDOWN_TIMEOUT": "-1"}, "CONSENT_SHUTDOWN_TIMEOUT"),
        ({"CONSENT_SHUTDOWN_TIMEOUT": "soon"}, "CONSENT_SHUTDOWN_TIMEOUT"),
        ({"CONSENT_TRUSTED_PROXIES": "10.0.0.0/8, nope"}, "CONSENT_TRUSTED_PROXIES"),
    ],
)
def test_bad_options_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SidecarOptions.from_env(env)


def test_options_from_the_environment_and_overrides() -> None:
    env = {
        "CONSENT_UPSTREAM": "http://127.0.0.1:3000",
        "CONSENT_SIDECAR_PORT": "9000",
        "CONSENT_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
        "CONSENT_UPSTREAM_TIMEOUT": "2.5",
        "CONSENT_SHUTDOWN_TIMEOUT": "25",
    }
    options = SidecarOptions.from_env(env, port=9100, host=None)
    assert options.shutdown_timeout == 25 and SidecarOptions().shutdown_timeout == 8
    assert options.port == 9100 and options.host == "127.0.0.1"
    assert options.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert options.upstream_timeout == 2.5 and options.upstream == "http://127.0.0.1:3000"


def test_hop_by_hop_and_identity_headers_are_removed() -> None:
    headers = [
        (b"connection", b"keep-alive, x-private"),
        (b"keep-alive", b"timeout=5"),
        (b"x-private", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"accept", b"*/*"),
    ]
    assert end_to_end(headers) == [(b"accept", b"*/*")]
    scope = {
        "headers": [
            (b"host", b"app.example"),
            (b"x-auth-request-user", b"admin"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x-forwarded-proto", b"https"),
        ],
        "client": ("192.0.2.7", 1),
        "scheme": "http",
    }
    trusted = dict(forwarded_headers(scope, True, [(b"x-auth-request-user", b"me")]))
    assert trusted[b"x-forwarded-for"] == b"10.0.0.1, 192.0.2.7"
    assert trusted[b"x-forwarded-proto"] == b"https"
    assert trusted[b"x-auth-request-user"] == b"me"
    untrusted = dict(forwarded_headers(scope, False, []))
    assert untrusted[b"x-forwarded-for"] == b"192.0.2.7"
    assert untrusted[b"x-forwarded-proto"] == b"http"
    assert untrusted[b"x-forwarded-host"] == b"app.example"
    assert b"x-auth-request-user" not in untrusted


def test_only_a_trusted_proxy_says_how_the_request_came() -> None:
    # Every header of the X-Forwarded-* kind, in any spelling, and what else proxies say
    # of the connection: a client's never reaches the upstream; a trusted proxy's does,
    # in the spelling it sends.
    said = [
        (b"x-forwarded-prefix", b"/evil"), (b"x-forwarded-port", b"1"),
        (b"x-forwarded-ssl", b"on"), (b"x-forwarded-scheme", b"https"),
        (b"x-forwarded-server", b"evil"), (b"x-forwarded-uri", b"/admin"),
        (b"x-forwarded-method", b"DELETE"), (b"x-original-uri", b"/admin"),
        (b"x-original-url", b"/admin"), (b"x-real-ip", b"6.6.6.6"),
        (b"forwarded", b"for=6.6.6.6;proto=https"), (b"x-forwarded", b"for=6.6.6.6"),
        (b"x-client-ip", b"6.6.6.6"), (b"true-client-ip", b"6.6.6.6"),
        (b"x-original-host", b"evil.example"), (b"x-rewrite-url", b"/admin"),
        (b"x-host", b"evil.example"),
    ]  # fmt: skip
    underscored = [
        (b"x_forwarded_proto", b"https"), (b"x_forwarded_host", b"evil.example"),
        (b"x_forwarded_for", b"6.6.6.6"), (b"x_real_ip", b"6.6.6.6"),
        (b"remote_user", b"admin"), (b"Remote-User", b"admin"), (b"remote-email", b"a@b"),
    ]  # fmt: skip
    scope = {
        "headers": [(b"host", b"app.example"), *said, *underscored],
        "client": ("192.0.2.7", 1),
        "scheme": "wss",
    }
    untrusted = forwarded_headers(scope, False, [])
    assert sorted(untrusted) == sorted(
        [
            (b"host", b"app.example"),
            (b"x-forwarded-for", b"192.0.2.7"),
            (b"x-forwarded-proto", b"https"),  # a websocket handshake is an HTTP request
            (b"x-forwarded-host", b"app.example"),
        ]
    )
    trusted = forwarded_headers(scope, True, [])
    assert all(pair in trusted for pair in said)
    assert not {name for name, _ in trusted} & {name.lower() for name, _ in underscored}


def test_the_forwarded_cookie_carries_the_new_session_only() -> None:
    headers = [(b"cookie", b"__session__0=old0; __session__1=old1; theme=dark"), (b"a", b"b")]
    set_cookies = [
        b"__session=new; Path=/; HttpOnly",
        b"__session__0=; Max-Age=0; Path=/",
        b"__session__1=; Max-Age=0; Path=/",
    ]
    rewritten = dict(with_new_session(headers, set_cookies))
    assert rewritten[b"cookie"] == b"theme=dark; __session=new"
    assert with_new_session(headers, []) == headers
    # The app's own "__sessionid" is the app's: it still reaches it.
    own = [(b"cookie", b"__sessionid=app; __session=old")]
    rewritten = dict(with_new_session(own, [b"__session=new; Path=/"]))
    assert rewritten[b"cookie"] == b"__sessionid=app; __session=new"


def request(path: str, headers: dict[str, str], method: str = "GET") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    path, _, query = path.partition("?")
    return Request(
        {"type": "http", "method": method, "path": path, "query_string": query.encode(),
         "headers": raw, "scheme": "http", "server": ("127.0.0.1", 4180)}
    )  # fmt: skip


def test_the_original_request_from_each_proxy_shape() -> None:
    nginx = original_request(
        request("/auth/check", {"X-Original-URI": "/a?b=1", "Host": "app.example"}), "/auth/check"
    )
    assert nginx == ("GET", "/a?b=1", "http://app.example")
    traefik = original_request(
        request(
            "/auth/check",
            {"X-Forwarded-Uri": "/x", "X-Forwarded-Method": "POST",
             "X-Forwarded-Host": "app.example", "X-Forwarded-Proto": "https"},
        ),
        "/auth/check",
    )  # fmt: skip
    assert traefik == ("POST", "/x", "https://app.example")
    envoy = original_request(
        request("/auth/check/api/v1?x=2", {"Host": "app.example"}, "DELETE"), "/auth/check"
    )
    assert envoy == ("DELETE", "/api/v1?x=2", "http://app.example")
    missing = original_request(request("/auth/check", {}), "/auth/check")
    assert not isinstance(missing, tuple) and missing.status_code == 400
    assert b"X-Forwarded-Host" in bytes(missing.body)


@pytest.mark.anyio
async def test_an_upstream_that_is_down_is_a_502_page() -> None:
    import time

    import httpx

    from consent_middleware import Session, TokenSet
    from consent_middleware._session import CookieSessionStore
    from consent_middleware.sidecar import Sidecar
    from tests.conftest import CLAIM, make_settings
    from tests.live_server import free_port
    from tests.test_session import jar

    settings = make_settings()
    consent = {"given": True, "version": settings.terms_version}
    session = Session.from_claims(
        {"sub": "auth0|1", CLAIM: consent}, TokenSet("at", "idt", "rt", int(time.time()) + 60)
    )
    cookies = jar(await CookieSessionStore(settings).save(session, {}))
    options = SidecarOptions(upstream=f"http://127.0.0.1:{free_port()}")
    sidecar = Sidecar(settings, options)
    transport = httpx.ASGITransport(app=sidecar)
    async with httpx.AsyncClient(
        transport=transport, base_url=settings.app_base_url, cookies=cookies
    ) as client:
        response = await client.get("/anything")
        assert response.status_code == 502 and "could not be reached" in response.text
        assert (await client.get("/ready")).status_code == 503  # no provider either
    await sidecar.gate.aclose()
    assert sidecar.upstream is not None
    await sidecar.upstream.aclose()


def test_an_assertion_is_reused_while_it_has_half_its_life_left() -> None:
    signer = AssertionSigner.from_setting("", SECRET)
    first = signer.sign("https://app", "https://up", {"sub": "u", "email": "e"})
    assert signer.sign("https://app", "https://up", {"email": "e", "sub": "u"}) == first
    assert signer.sign("https://app", "https://up", {"sub": "v"}) != first
    assert signer.sign("https://app", "https://other", {"sub": "u", "email": "e"}) != first
    # Past half its lifetime, a new one is signed.
    key = next(iter(signer._recent))
    token, expires = signer._recent[key]
    signer._recent[key] = (token, expires - 31)
    assert signer.sign("https://app", "https://up", {"sub": "u", "email": "e"}) != first


def test_identity_headers_under_any_spelling_are_stripped() -> None:
    scope = {
        "headers": [
            (b"x_auth_request_user", b"admin"),
            (b"X-Consent-Version", b"v9"),
            # oauth2-proxy's names: an app moved from it may still read them.
            (b"X-Forwarded-User", b"admin"),
            (b"x_forwarded_email", b"ceo@example.com"),
            (b"accept", b"text/html"),
        ],
        "client": ("192.0.2.7", 1),
        "scheme": "http",
    }
    names = {name.lower() for name, _ in forwarded_headers(scope, False, [])}
    assert not names & {b"x_auth_request_user", b"x-consent-version", b"x-forwarded-user"}
    assert b"x_forwarded_email" not in names
    assert b"accept" in names


@pytest.mark.anyio
async def test_the_access_token_goes_upstream_when_asked_and_never_from_the_client() -> None:
    import time

    import httpx

    from consent_middleware import Session, TokenSet
    from consent_middleware._session import CookieSessionStore
    from consent_middleware.sidecar import Sidecar
    from tests.conftest import CLAIM, make_settings
    from tests.live_server import serve
    from tests.sidecar.test_sidecar import UPSTREAM
    from tests.test_session import jar

    settings = make_settings()
    consent = {"given": True, "version": settings.terms_version}
    session = Session.from_claims(
        {"sub": "auth0|1", CLAIM: consent}, TokenSet("at-1", "idt", "rt", int(time.time()) + 600)
    )
    cookies = jar(await CookieSessionStore(settings).save(session, {}))
    with serve(UPSTREAM) as upstream:
        for passing in (True, False):
            sidecar = Sidecar(
                settings, SidecarOptions(upstream=upstream, pass_access_token=passing)
            )
            transport = httpx.ASGITransport(app=sidecar)
            async with httpx.AsyncClient(
                transport=transport, base_url=settings.app_base_url, cookies=cookies
            ) as client:
                forged = {"X-Forwarded-Access-Token": "forged"}
                seen = (await client.get("/x", headers=forged)).json()["headers"]
            assert seen.get("x-forwarded-access-token") == ("at-1" if passing else None)
            await sidecar.gate.aclose()
            assert sidecar.upstream is not None
            await sidecar.upstream.aclose()


def test_a_websocket_gets_the_access_token_while_it_is_good() -> None:
    # A handshake cannot carry a renewed session back to the browser: the token goes
    # along while still good; once it is not, a clear 401 (the next page load renews it).
    import time

    import websockets

    from consent_middleware import Session, TokenSet
    from consent_middleware._session import CookieSessionStore
    from consent_middleware.sidecar import Sidecar
    from tests.conftest import CLAIM, make_settings
    from tests.live_server import serve
    from tests.sidecar.test_sidecar import UPSTREAM
    from tests.test_session import jar

    settings = make_settings()
    consent = {"given": True, "version": settings.terms_version}

    def cookie(expires_in: int) -> str:
        tokens = TokenSet("at-1", "idt", "rt", int(time.time()) + expires_in)
        session = Session.from_claims({"sub": "auth0|1", CLAIM: consent}, tokens)
        saved = jar(asyncio.run(CookieSessionStore(settings).save(session, {})))
        return "; ".join(f"{k}={v}" for k, v in saved.items())

    async def token(url: str, cookie: str) -> str | int:
        headers = {"Cookie": cookie, "Origin": settings.app_base_url}
        try:
            async with websockets.connect(url, additional_headers=headers) as socket:
                return str(await asyncio.wait_for(socket.recv(), 5))
        except websockets.InvalidStatus as refused:
            return int(refused.response.status_code)

    with serve(UPSTREAM) as upstream:
        sidecar = Sidecar(settings, SidecarOptions(upstream=upstream, pass_access_token=True))
        with serve(sidecar) as base:
            url = base.replace("http", "ws") + "/ws-token"
            assert asyncio.run(token(url, cookie(600))) == "at-1"
            assert asyncio.run(token(url, cookie(5))) == 401


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("CONSENT_PASS_ACCESS_TOKEN", "pass_access_token"),
        ("CONSENT_SKIP_PREFLIGHT", "skip_preflight"),
    ],
)
def test_flags_read_true_or_false(variable: str, field: str) -> None:
    assert getattr(SidecarOptions.from_env({variable: "true"}), field) is True
    assert getattr(SidecarOptions.from_env({variable: "0"}), field) is False
    assert getattr(SidecarOptions.from_env({}), field) is False
    with pytest.raises(ConfigurationError, match=f"{variable} must be true or false"):
        SidecarOptions.from_env({variable: "maybe"})


def test_a_relay_ended_by_a_browser_that_left_leaves_no_error_unread() -> None:
    # The upstream speaks after the browser went away: the server's send raises. The
    # relay ends quietly, leaving no task whose exception asyncio reports later.
    reported: list[dict[str, Any]] = []

    class Upstream:
        close_code = 1000

        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> str:
            return "hello"

        async def close(self, code: int = 1000) -> None:
            pass

        async def send(self, data: Any) -> None:
            pass

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "websocket.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        raise OSError("the browser went away")

    async def relay() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context)
        )
        await _relay(receive, send, Upstream())
        gc.collect()

    asyncio.run(relay())
    gc.collect()
    assert reported == []


@pytest.mark.anyio
async def test_ready_once_discovery_loaded_without_asking_the_provider_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A readiness probe must neither wait on the provider nor fail with it: the users
    # already signed in are served without it.
    import httpx
    import respx

    from consent_middleware.sidecar import Sidecar
    from tests.conftest import DOMAIN, idp, make_settings
    from tests.keys import SigningKey

    now = [1000.0]
    monkeypatch.setattr("consent_middleware._oidc.time.monotonic", lambda: now[0])
    sidecar = Sidecar(make_settings(), SidecarOptions())
    transport = httpx.ASGITransport(app=sidecar)
    with respx.mock(assert_all_called=False) as mock:
        idp(mock, [SigningKey.generate("k1")])
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/ready")).json() == {"ready": True}
            calls = mock.calls.call_count
            mock.get(f"{DOMAIN}/.well-known/openid-configuration").respond(503)
            now[0] += 7200
            assert (await client.get("/ready")).json() == {"ready": True}
            assert mock.calls.call_count == calls
    await sidecar.gate.aclose()
