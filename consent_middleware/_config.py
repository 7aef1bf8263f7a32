"""Settings, read from the environment (nextjs-auth0 names) or built in code."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from ._exceptions import ConfigurationError
from ._purposes import (
    Purpose,
    Requirement,
    check_purposes,
    check_requirements,
    parse_purposes,
    parse_requirements,
)

WithdrawMode = Literal["revoke", "flag", "delete"]
WITHDRAW_MODES: tuple[str, ...] = ("revoke", "flag", "delete")
SessionStoreName = Literal["cookie", "redis"]
SESSION_STORES: tuple[str, ...] = ("cookie", "redis")
AudienceParameter = Literal["auto", "audience", "resource"]
#: The path of Auth0's token endpoint (custom domains too), which takes ``audience``.
AUTH0_TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path
AUDIENCE_PARAMETERS: tuple[str, ...] = ("auto", "audience", "resource")
MIN_SECRET_LENGTH = 32

# Field name -> environment variable, so every message names what the user actually set.
ENV_NAMES: dict[str, str] = {
    "domain": "AUTH0_DOMAIN",
    "client_id": "AUTH0_CLIENT_ID",
    "client_secret": "AUTH0_CLIENT_SECRET",
    "secret": "AUTH0_SECRET",
    "app_base_url": "APP_BASE_URL",
    "consent_claim": "CONSENT_CLAIM",
    "terms_version": "CONSENT_TERMS_VERSION",
    "terms_url": "CONSENT_TERMS_URL",
    "mgmt_client_id": "AUTH0_MGMT_CLIENT_ID",
    "mgmt_client_secret": "AUTH0_MGMT_CLIENT_SECRET",
    "previous_secrets": "AUTH0_PREVIOUS_SECRETS",
    "audience": "AUTH0_AUDIENCE",
    "audience_parameter": "CONSENT_AUDIENCE_PARAMETER",
    "scope": "AUTH0_SCOPE",
    "withdraw_mode": "CONSENT_WITHDRAW_MODE",
    "terms_text": "CONSENT_TERMS_TEXT",
    "public_paths": "CONSENT_PUBLIC_PATHS",
    "api_prefixes": "CONSENT_API_PREFIXES",
    "inactivity_duration": "CONSENT_SESSION_INACTIVITY",
    "absolute_duration": "CONSENT_SESSION_ABSOLUTE",
    "revalidate_seconds": "CONSENT_REVALIDATE_SECONDS",
    "admission_cache_mb": "CONSENT_ADMISSION_CACHE_MB",
    "ungated_websockets": "CONSENT_UNGATED_WEBSOCKETS",
    "accepts_per_minute": "CONSENT_ACCEPTS_PER_MINUTE",
    "redis_url": "CONSENT_REDIS_URL",
    "session_store": "CONSENT_SESSION_STORE",
    "purposes": "CONSENT_PURPOSES",
    "require": "CONSENT_REQUIRE",
    "history_limit": "CONSENT_HISTORY_LIMIT",
    "ledger_url": "CONSENT_LEDGER_URL",
    "ledger_key": "CONSENT_LEDGER_KEY",
    "controller": "CONSENT_CONTROLLER",
}
REQUIRED = (
    "domain",
    "client_id",
    "client_secret",
    "secret",
    "app_base_url",
    "consent_claim",
    "terms_version",
    "terms_url",
)
_LIST_FIELDS = {"previous_secrets", "public_paths", "api_prefixes", "ungated_websockets"}
_INT_FIELDS = {
    "inactivity_duration",
    "absolute_duration",
    "revalidate_seconds",
    "admission_cache_mb",
    "accepts_per_minute",
    "history_limit",
}


def _name(field_name: str) -> str:
    return ENV_NAMES.get(field_name, field_name)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A DNS name or an IP address (IPv6 without its brackets, as urlsplit hands it over).
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")


def _normalise_url(field_name: str, value: str, *, bare_host_ok: bool) -> str:
    """Return scheme://host[:port][/path] without a trailing slash.

    Plain http is accepted only for loopback hosts: anything else would send
    secrets and tokens in clear text.
    """
    value = value.strip()
    if bare_host_ok and "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    hostname = parts.hostname
    if parts.scheme not in ("http", "https") or not hostname or not _HOST.fullmatch(hostname):
        hint = " (an international name in its xn-- form)" if not value.isascii() else ""
        raise ConfigurationError(f"{_name(field_name)} must be an http(s) URL{hint}, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"{_name(field_name)} must not contain credentials, a query or a fragment"
        )
    if parts.scheme == "http" and not is_loopback_host(hostname):
        raise ConfigurationError(
            f"{_name(field_name)} uses plain http:// for {hostname!r}; "
            "only loopback hosts (localhost, 127.0.0.0/8, [::1]) may use http"
        )
    # As browsers serialise an origin (RFC 6454 6.2): lower-case host, no default port, so
    # comparing it with a request's Origin header is a plain string comparison.
    host = hostname.lower()
    host = f"[{host}]" if ":" in host else host
    try:
        number = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{_name(field_name)} has an invalid port: {value!r}") from exc
    default_port = {"http": 80, "https": 443}[parts.scheme]
    port = f":{number}" if number is not None and number != default_port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs. ``Settings.from_env()`` reads the same names."""

    domain: str
    client_id: str
    client_secret: str
    secret: str
    app_base_url: str
    consent_claim: str
    terms_version: str
    terms_url: str
    mgmt_client_id: str = ""
    mgmt_client_secret: str = ""
    # Older AUTH0_SECRET values, still accepted for decryption while cookies roll over.
    previous_secrets: tuple[str, ...] = ()
    audience: str = ""
    # How a token for another API is asked for with the refresh token: Auth0's
    # ``audience`` (Multi-Resource Refresh Token), RFC 8707's ``resource``, or "auto":
    # ``audience`` when the token endpoint is Auth0's ``/oauth/token``, else ``resource``.
    audience_parameter: AudienceParameter = "auto"
    scope: str = "openid profile email offline_access"
    withdraw_mode: WithdrawMode = "revoke"
    # The statement shown beside the checkbox; its SHA-256 is stored with the consent.
    terms_text: str = ""
    public_paths: tuple[str, ...] = ()
    api_prefixes: tuple[str, ...] = ()
    inactivity_duration: int = 24 * 3600
    absolute_duration: int = 3 * 24 * 3600
    # Re-check every session with the provider this often (a refresh-token grant per active
    # session per interval); 0 = only when a revocation mark asks for it.
    revalidate_seconds: int = 0
    # The memory the gate's cache of admitted requests may take, in MB (0: none). Past it, a
    # request takes the full check (decrypt, summarise, decide), which is cheap, while a
    # cache that grows with the number of users is memory that grows with them.
    admission_cache_mb: int = 12
    # Websocket paths the gate lets through untouched (same "*" rule as public_paths).
    ungated_websockets: tuple[str, ...] = ()
    # Accepts (each a Management API write and a grant) one user may make per minute.
    accepts_per_minute: int = 10
    # State shared by every worker and replica (locks, marks, grant records, throttles):
    # redis:// or rediss://. Empty = this process only.
    redis_url: str = ""
    # Where sessions live: whole in the cookie, or in Redis with an id in the cookie.
    session_store: SessionStoreName = "cookie"
    # Optional purposes beside the terms, and the paths that need them (see _purposes).
    purposes: tuple[Purpose, ...] = ()
    require: tuple[Requirement, ...] = ()
    # Events kept in Auth0's app_metadata.consent.history (the ledger keeps every one).
    history_limit: int = 50
    # The ledger the app owns (sqlite:///... or postgresql://...); empty = none. Its key
    # pseudonymises users and is separate from AUTH0_SECRET, which may rotate.
    ledger_url: str = ""
    ledger_key: str = ""
    # Who collects the consent, as the receipt names them; defaults to APP_BASE_URL.
    controller: str = ""
    routes_prefix: str = "/auth"
    consent_path: str = "/consent"
    templates_directory: str | None = None
    http_timeout: float = 10.0
    clock_leeway: int = 60

    def __post_init__(self) -> None:
        for name in REQUIRED:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f"{_name(name)} is required")
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        set_(self, "domain", _normalise_url("domain", self.domain, bare_host_ok=True))
        base = _normalise_url("app_base_url", self.app_base_url, bare_host_ok=False)
        set_(self, "app_base_url", base)
        named = [("secret", self.secret)] + [("previous_secrets", s) for s in self.previous_secrets]
        for name, secret in named:
            if len(secret) < MIN_SECRET_LENGTH:
                each = " each" if name == "previous_secrets" else ""
                raise ConfigurationError(
                    f"{_name(name)} must be at least {MIN_SECRET_LENGTH} characters{each} "
                    "(generate one with: openssl rand -hex 32)"
                )
        claim = urlsplit(self.consent_claim)
        if claim.scheme not in ("http", "https") or not claim.netloc:
            raise ConfigurationError(
                f"{_name('consent_claim')} must be a namespaced URL such as "
                "https://example.com/consent (Auth0 drops claims without a namespace)"
            )
        if self.withdraw_mode not in WITHDRAW_MODES:
            raise ConfigurationError(
                f"{_name('withdraw_mode')} must be one of {', '.join(WITHDRAW_MODES)}"
            )
        if self.audience_parameter not in AUDIENCE_PARAMETERS:
            raise ConfigurationError(
                f"{_name('audience_parameter')} must be one of {', '.join(AUDIENCE_PARAMETERS)}"
            )
        if self.audience_parameter == "resource" and self.audience:
            if not is_resource_uri(self.audience):
                raise ConfigurationError(
                    f"{_name('audience')} must be an absolute URI without a fragment to be "
                    f"sent as RFC 8707's resource ({_name('audience_parameter')}=resource)"
                )
        if "openid" not in self.scope.split():
            raise ConfigurationError(f"{_name('scope')} must include 'openid'")
        if self.inactivity_duration <= 0 or self.absolute_duration < self.inactivity_duration:
            raise ConfigurationError(
                f"{_name('inactivity_duration')} must be > 0 and "
                f"{_name('absolute_duration')} at least as long"
            )
        for prefix_field in ("routes_prefix", "consent_path"):
            value = getattr(self, prefix_field)
            if not value.startswith("/") or value == "/" or value.endswith("/"):
                raise ConfigurationError(f"{prefix_field} must look like '/auth', got {value!r}")
        if self.session_store not in SESSION_STORES:
            raise ConfigurationError(
                f"{_name('session_store')} must be one of {', '.join(SESSION_STORES)}"
            )
        if self.redis_url:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigurationError(
                    f"{_name('redis_url')} must be a redis://, rediss:// or unix:// URL"
                )
        elif self.session_store == "redis":
            raise ConfigurationError(f"{_name('session_store')}=redis needs {_name('redis_url')}")
        if self.revalidate_seconds < 0:
            raise ConfigurationError(f"{_name('revalidate_seconds')} must be 0 (off) or more")
        if self.admission_cache_mb < 0:
            raise ConfigurationError(f"{_name('admission_cache_mb')} must be 0 (none) or more")
        if self.accepts_per_minute < 1:
            raise ConfigurationError(f"{_name('accepts_per_minute')} must be at least 1")
        for list_field in ("public_paths", "api_prefixes", "ungated_websockets"):
            for path in getattr(self, list_field):
                if not path.startswith("/"):
                    raise ConfigurationError(f"{_name(list_field)}: {path!r} must start with '/'")
        check_purposes(self.purposes, _name("purposes"))
        check_requirements(self.require, self.purposes, _name("require"))
        if self.history_limit < 1:
            raise ConfigurationError(f"{_name('history_limit')} must be at least 1")
        _check_backends(self)
        if self.templates_directory and not os.path.isdir(self.templates_directory):
            raise ConfigurationError(
                f"{_name('templates_directory')}: {self.templates_directory!r} is no directory"
            )
        terms = urlsplit(self.terms_url)
        # A path, or an absolute http(s) URL: never "//host" or "/\host", which browsers
        # read as another site.
        if not (terms.scheme in ("http", "https") and terms.netloc) and not (
            self.terms_url[:1] == "/" and self.terms_url[1:2] not in ("/", "\\")
        ):
            raise ConfigurationError(
                f"{_name('terms_url')} must be an http(s) URL or a path on the site, "
                f"got {self.terms_url!r}"
            )
        if self.ledger_url and len(self.ledger_key) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"{_name('ledger_key')} must be set, at least {MIN_SECRET_LENGTH} characters, "
                f"when {_name('ledger_url')} is (generate one with: openssl rand -hex 32)"
            )
        if not self.mgmt_client_id:
            set_(self, "mgmt_client_id", self.client_id)
            if not self.mgmt_client_secret:
                set_(self, "mgmt_client_secret", self.client_secret)
        elif not self.mgmt_client_secret:
            raise ConfigurationError(
                f"{_name('mgmt_client_secret')} is required when {_name('mgmt_client_id')} is set"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from environment variables; ``overrides`` win over them."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field_name, env_name in ENV_NAMES.items():
            raw = env.get(env_name)
            if raw is None or raw.strip() == "":
                continue
            if field_name == "purposes":
                values[field_name] = parse_purposes(raw, env_name)
            elif field_name == "require":
                values[field_name] = parse_requirements(raw, env_name)
            elif field_name in _LIST_FIELDS:
                values[field_name] = _split_list(raw)
            elif field_name in _INT_FIELDS:
                try:
                    values[field_name] = int(raw)
                except ValueError as exc:
                    raise ConfigurationError(
                        f"{env_name} must be a whole number, got {raw!r}"
                    ) from exc
            else:
                values[field_name] = raw.strip()
        values.update(overrides)
        missing = [ENV_NAMES[name] for name in REQUIRED if not values.get(name)]
        if missing:
            raise ConfigurationError(f"missing required setting(s): {', '.join(missing)}")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def secrets(self) -> tuple[str, ...]:
        """The current secret first (it encrypts), then the previous ones (decrypt only)."""
        return (self.secret, *self.previous_secrets)

    @property
    def secure_cookies(self) -> bool:
        return self.app_base_url.startswith("https://")

    @property
    def callback_url(self) -> str:
        return f"{self.app_base_url}{self.routes_prefix}/callback"

    @property
    def management_audience(self) -> str:
        return f"{self.domain}/api/v2/"

    def audience_parameter_for(self, token_endpoint: str, audience: str = "") -> str:
        """How a request names the API a token is for (``audience``, when known): Auth0's
        ``audience``, or RFC 8707's ``resource``. On ``auto``: ``audience`` for a token
        endpoint at Auth0's path, and for a value that cannot be a resource (RFC 8707 2:
        an absolute URI without a fragment), which other providers ignore as they did."""
        if self.audience_parameter != "auto":
            return self.audience_parameter
        if audience and not is_resource_uri(audience):
            return "audience"
        auth0 = urlsplit(token_endpoint).path.rstrip("/") == AUTH0_TOKEN_PATH
        return "audience" if auth0 else "resource"


def _check_backends(settings: Settings) -> None:
    """What the Redis and ledger URLs need installed, and a ledger URL that can work: found
    wrong here, at start-up (Starlette builds middleware lazily, at its first event, where
    uvicorn's default lifespan handling would hide the error behind 500s)."""
    for field_name, module, extra in (
        ("redis_url", "redis", "redis"),
        ("ledger_url", "sqlalchemy", "ledger"),
    ):
        if getattr(settings, field_name) and importlib.util.find_spec(module) is None:
            raise ConfigurationError(
                f"{_name(field_name)} needs the {extra} extra: "
                f"pip install 'consent-middleware[{extra}]'"
            )
    if settings.ledger_url:
        from ._ledger_schema import engine_url

        driver = engine_url(settings.ledger_url).drivername.partition("+")[2]
        if importlib.util.find_spec(driver) is None:
            raise ConfigurationError(
                f"{_name('ledger_url')} needs {driver}: pip install 'consent-middleware[ledger]'"
            )


def is_resource_uri(value: str) -> bool:
    """Whether ``value`` may be sent as an RFC 8707 resource: an absolute URI (a scheme and
    a host) without a fragment."""
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and "#" not in value


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())
