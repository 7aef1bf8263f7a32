from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from playwright.sync_api import Browser, sync_playwright

from consent_middleware import Settings, _jose
from consent_middleware._engine import Engine
from consent_middleware._oidc import OIDCClient
from tests.keys import SigningKey
from tests.postgres_server import PostgresServer, postgres_server
from tests.redis_server import RedisServer, redis_server

DOMAIN = "https://tenant.example.com"
ISSUER = f"{DOMAIN}/"
CLAIM = "https://consent.example.com/consent"
DISCOVERY = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{DOMAIN}/authorize",
    "token_endpoint": f"{DOMAIN}/oauth/token",
    "jwks_uri": f"{DOMAIN}/.well-known/jwks.json",
    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
}


class Sleeps:
    """Records the waits (the Management client's back-off) instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # The package is asyncio-only (asyncio locks); anyio's trio run would not apply.
    return "asyncio"


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate("key-1")


@pytest.fixture(scope="session")
def other_key() -> SigningKey:
    return SigningKey.generate("key-2")


@pytest.fixture
def decrypts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """One entry per JWE the package decrypts (session and transaction cookies)."""
    calls: list[object] = []
    real = _jose.decrypt

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(_jose, "decrypt", counting)
    return calls


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "domain": "tenant.example.com",
        "client_id": "client-1",
        "client_secret": "client-secret-1",
        "secret": "s" * 40,
        "app_base_url": "https://app.example.com",
        "consent_claim": CLAIM,
        "terms_version": "v2",
        "terms_url": "https://app.example.com/terms",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A pooled client closed however the test ends (respx patches its transport)."""
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def oidc(http: httpx.AsyncClient) -> OIDCClient:
    return OIDCClient(make_settings(), http)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    """Everything a gate needs, wired by the composition root; closed however the test ends."""
    built = Engine.create(make_settings())
    try:
        yield built
    finally:
        await built.aclose()


def idp(mock: respx.MockRouter, keys: list[SigningKey], **discovery: object) -> respx.Route:
    """Discovery and JWKS of the mocked provider; returns the JWKS route to count fetches."""
    mock.get(f"{DOMAIN}/.well-known/openid-configuration").respond(json={**DISCOVERY, **discovery})
    return mock.get(f"{DOMAIN}/.well-known/jwks.json").respond(
        json={"keys": [k.public_jwk for k in keys]}
    )


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by key prefix."""
    with redis_server() as running:
        yield running


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; each test gets a database of its own."""
    with postgres_server() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database's URL, as users write it: every ledger behaviour is
    tested on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"ledger_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (no browser is downloaded).
    Per module: Playwright's sync API keeps an event loop running in this thread while it
    is open, and other modules' tests call asyncio.run."""
    from tests.browser_flags import CHROMIUM, FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()
