"""The sidecar's own settings, beside the package's (``Settings``): from the environment,
overridden by command-line options."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._exceptions import ConfigurationError

# Option -> environment variable, as --help lists them.
ENV_NAMES = {
    "upstream": "CONSENT_UPSTREAM",
    "host": "CONSENT_SIDECAR_HOST",
    "port": "CONSENT_SIDECAR_PORT",
    "workers": "CONSENT_SIDECAR_WORKERS",
    "trusted_proxies": "CONSENT_TRUSTED_PROXIES",
    "assertion_key": "CONSENT_ASSERTION_KEY",
    "upstream_timeout": "CONSENT_UPSTREAM_TIMEOUT",
    "pass_access_token": "CONSENT_PASS_ACCESS_TOKEN",
    "skip_preflight": "CONSENT_SKIP_PREFLIGHT",
    "shutdown_timeout": "CONSENT_SHUTDOWN_TIMEOUT",
}
_FLAGS = ("pass_access_token", "skip_preflight")


@dataclass(frozen=True)
class SidecarOptions:
    #: The app to proxy to; empty = forward-auth only.
    upstream: str = ""
    host: str = "127.0.0.1"
    port: int = 4180
    workers: int = 1
    #: Addresses and networks allowed to set X-Forwarded-*; none by default.
    trusted_proxies: tuple[str, ...] = ()
    #: A private EC P-256 key (JWK or PEM) for the identity assertion; derived when empty.
    assertion_key: str = ""
    #: Seconds the upstream may take to start answering, and between two chunks.
    upstream_timeout: float = 60.0
    #: Send the user's access token upstream as X-Forwarded-Access-Token (renewed first
    #: when it is about to run out); never to the browser.
    pass_access_token: bool = False
    #: Let CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) through
    #: to the upstream ungated: a browser sends them without cookies, so they can never
    #: pass the gate, and the request they announce is gated all the same.
    skip_preflight: bool = False
    #: Seconds a stop (SIGTERM) waits for requests in flight before it cuts them: an
    #: event stream or a long poll never ends on its own. Below Docker's 10 s (then it
    #: kills); raise it with Kubernetes' terminationGracePeriodSeconds.
    shutdown_timeout: int = 8

    def __post_init__(self) -> None:
        if self.upstream:
            parts = urlsplit(self.upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(
                    f"CONSENT_UPSTREAM must be an http(s) URL, got {self.upstream!r}"
                )
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"CONSENT_SIDECAR_PORT must be a TCP port, got {self.port}")
        if self.workers < 1:
            raise ConfigurationError("CONSENT_SIDECAR_WORKERS must be at least 1")
        if not self.upstream_timeout > 0:  # NaN too
            raise ConfigurationError("CONSENT_UPSTREAM_TIMEOUT must be more than 0 seconds")
        if self.shutdown_timeout < 0:
            raise ConfigurationError("CONSENT_SHUTDOWN_TIMEOUT must be 0 seconds or more")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ConfigurationError(
                    f"CONSENT_TRUSTED_PROXIES: {entry!r} is not an address or a network"
                ) from exc

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> SidecarOptions:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, variable in ENV_NAMES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                if name in ("port", "workers", "shutdown_timeout"):
                    values[name] = int(raw)
                elif name == "upstream_timeout":
                    values[name] = float(raw)
                elif name in _FLAGS:
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(raw)
                    values[name] = raw.lower() in ("true", "1", "yes")
                elif name == "trusted_proxies":
                    values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
                else:
                    values[name] = raw
            except ValueError as exc:
                kind = "true or false" if name in _FLAGS else "a number"
                raise ConfigurationError(f"{variable} must be {kind}, got {raw!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
