from __future__ import annotations

import pytest

from consent_middleware import Settings
from tests.keys import SigningKey

ISSUER = "https://tenant.example.com/"
CLAIM = "https://consent.example.com/consent"


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate("key-1")


@pytest.fixture(scope="session")
def other_key() -> SigningKey:
    return SigningKey.generate("key-2")


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
