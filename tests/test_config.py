from __future__ import annotations

import pytest

from consent_middleware import ConfigurationError, Settings
from tests.conftest import make_settings

ENV = {
    "AUTH0_DOMAIN": "tenant.us.auth0.com",
    "AUTH0_CLIENT_ID": "cid",
    "AUTH0_CLIENT_SECRET": "csecret",
    "AUTH0_SECRET": "x" * 32,
    "APP_BASE_URL": "https://app.example.com/",
    "CONSENT_CLAIM": "https://example.com/consent",
    "CONSENT_TERMS_VERSION": "2026-01",
    "CONSENT_TERMS_URL": "https://app.example.com/terms",
}


def test_from_env_reads_nextjs_auth0_names_and_normalises() -> None:
    settings = Settings.from_env(ENV)
    assert settings.domain == "https://tenant.us.auth0.com"
    assert settings.app_base_url == "https://app.example.com"
    assert settings.callback_url == "https://app.example.com/auth/callback"
    assert settings.management_audience == "https://tenant.us.auth0.com/api/v2/"
    assert settings.secure_cookies is True
    # Management credentials default to the app's own.
    assert (settings.mgmt_client_id, settings.mgmt_client_secret) == ("cid", "csecret")
    assert settings.withdraw_mode == "revoke"
    assert "offline_access" in settings.scope.split()


def test_lists_and_numbers_from_env() -> None:
    env = {
        **ENV,
        "CONSENT_PUBLIC_PATHS": "/, /static/*",
        "CONSENT_SESSION_INACTIVITY": "600",
        "CONSENT_ADMISSION_CACHE_MB": "48",
        "AUTH0_MGMT_CLIENT_ID": "m2m",
        "AUTH0_MGMT_CLIENT_SECRET": "m2m-secret",
    }
    settings = Settings.from_env(env)
    assert settings.public_paths == ("/", "/static/*")
    assert settings.inactivity_duration == 600
    assert settings.admission_cache_mb == 48
    assert settings.mgmt_client_id == "m2m"


@pytest.mark.parametrize("missing", sorted(ENV))
def test_missing_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ConfigurationError, match=missing):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AUTH0_SECRET", "short", "at least 32"),
        ("AUTH0_PREVIOUS_SECRETS", f"{'p' * 40},short", "at least 32 characters each"),
        ("AUTH0_DOMAIN", "http://tenant.example.com", "only loopback"),
        ("AUTH0_DOMAIN", "ftp://tenant.example.com", "http"),
        ("AUTH0_DOMAIN", "https://tenant.example.com/?x=1", "query"),
        ("APP_BASE_URL", "app.example.com", "http"),
        ("APP_BASE_URL", "http://192.168.1.10:8000", "only loopback"),
        ("CONSENT_CLAIM", "consent", "namespaced"),
        ("CONSENT_WITHDRAW_MODE", "forget", "revoke, flag, delete"),
        ("AUTH0_SCOPE", "profile email", "openid"),
        ("CONSENT_SESSION_INACTIVITY", "soon", "whole number"),
        ("CONSENT_PUBLIC_PATHS", "static", "must start with"),
        ("CONSENT_ADMISSION_CACHE_MB", "-1", "0 (none) or more"),
        ("AUTH0_DOMAIN", "not a url", "http(s) URL"),
        ("CONSENT_TERMS_URL", "javascript:alert(1)", "http(s) URL or a path"),
        ("CONSENT_TERMS_URL", "not a url", "http(s) URL or a path"),
        ("CONSENT_TERMS_URL", "//evil.example/terms", "http(s) URL or a path"),
        ("CONSENT_TERMS_URL", "/\\evil.example/terms", "http(s) URL or a path"),
        ("AUTH0_DOMAIN", "bücher.example", "xn-- form"),
    ],
)
def test_invalid_value_fails_with_the_variable_name(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({**ENV, name: value})
    assert name in str(info.value)
    assert message in str(info.value)


def test_an_audience_sent_as_a_resource_must_be_an_absolute_uri() -> None:
    # RFC 8707 2: a provider answers anything else with invalid_target, every login failing.
    env = {**ENV, "CONSENT_AUDIENCE_PARAMETER": "resource"}
    with pytest.raises(ConfigurationError, match=r"AUTH0_AUDIENCE.*absolute URI"):
        Settings.from_env({**env, "AUTH0_AUDIENCE": "my-api"})
    assert Settings.from_env({**env, "AUTH0_AUDIENCE": "https://api.example.com"}).audience
    # auto sends such a value as audience instead (see test_oidc): no error.
    assert Settings.from_env({**ENV, "AUTH0_AUDIENCE": "my-api"}).audience == "my-api"


@pytest.mark.parametrize(
    "domain", ["http://localhost:3000", "http://127.0.0.5:8000/dev", "http://[::1]:9000"]
)
def test_plain_http_allowed_for_loopback(domain: str) -> None:
    assert Settings.from_env({**ENV, "AUTH0_DOMAIN": domain}).domain == domain.rstrip("/")


def test_mgmt_secret_required_with_mgmt_client_id() -> None:
    with pytest.raises(ConfigurationError, match="AUTH0_MGMT_CLIENT_SECRET"):
        Settings.from_env({**ENV, "AUTH0_MGMT_CLIENT_ID": "m2m"})


def test_typed_object_validates_too() -> None:
    with pytest.raises(ConfigurationError, match="AUTH0_CLIENT_ID"):
        make_settings(client_id="")
    settings = make_settings(previous_secrets=("p" * 32,))
    assert settings.secrets == ("s" * 40, "p" * 32)
    with pytest.raises(ConfigurationError, match="AUTH0_PREVIOUS_SECRETS"):
        make_settings(previous_secrets=("short",))


def test_urls_are_kept_as_browsers_serialise_origins() -> None:
    settings = make_settings(
        app_base_url="https://App.Example.com:443/base/", domain="Tenant.Example.com:443"
    )
    assert settings.app_base_url == "https://app.example.com/base"
    assert settings.domain == "https://tenant.example.com"
    assert make_settings(app_base_url="http://localhost:8080").app_base_url == (
        "http://localhost:8080"
    )
    with pytest.raises(ConfigurationError, match="invalid port"):
        make_settings(app_base_url="https://app.example.com:http")


def test_templates_must_be_a_directory() -> None:
    # Not silently the package's own templates, with the app's left unread.
    with pytest.raises(ConfigurationError, match="is no directory"):
        make_settings(templates_directory="/no/such/directory")


def test_a_terms_path_on_the_site_is_a_terms_url() -> None:
    assert Settings.from_env({**ENV, "CONSENT_TERMS_URL": "/terms"}).terms_url == "/terms"


@pytest.mark.parametrize(
    ("name", "value", "module", "extra"),
    [
        ("CONSENT_REDIS_URL", "redis://127.0.0.1:6379/0", "redis", "redis"),
        ("CONSENT_LEDGER_URL", "sqlite:///ledger.db", "sqlalchemy", "ledger"),
        ("CONSENT_LEDGER_URL", "sqlite:///ledger.db", "aiosqlite", "ledger"),
        ("CONSENT_LEDGER_URL", "postgresql://db/consent", "asyncpg", "ledger"),
    ],
)
def test_a_backend_without_its_extra_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, module: str, extra: str
) -> None:
    # Found at Settings, not when Starlette first builds the middleware: there, uvicorn's
    # default lifespan handling would log "lifespan unsupported" and answer 500s.
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == module else found(m, *a)
    )
    env = {**ENV, name: value, "CONSENT_LEDGER_KEY": "k" * 32}
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert name in str(info.value) and f"consent-middleware[{extra}]" in str(info.value)


def test_a_ledger_url_that_cannot_work_stops_start_up() -> None:
    env = {**ENV, "CONSENT_LEDGER_URL": "mysql://x/db", "CONSENT_LEDGER_KEY": "k" * 32}
    with pytest.raises(ConfigurationError, match="CONSENT_LEDGER_URL must look like"):
        Settings.from_env(env)
