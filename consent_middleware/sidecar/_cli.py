"""``consent-sidecar``: the command that serves the sidecar with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._config import ENV_NAMES, REQUIRED, Settings
from .._exceptions import ConfigurationError
from ._assertion import AssertionSigner
from ._logging import log_config
from ._options import ENV_NAMES as SIDECAR_ENV_NAMES
from ._options import SidecarOptions

EPILOG = """environment (options win over these):
{sidecar}

the gate's own settings, as for the middleware (* = required):
{gate}

Several workers share state only through CONSENT_REDIS_URL: without it, --workers above 1
is refused. Health: GET /ping (liveness) and GET /ready (the provider's discovery loaded).
"""


def parser() -> argparse.ArgumentParser:
    sidecar = "\n".join(f"  {name}" for name in SIDECAR_ENV_NAMES.values())
    gate = "\n".join(
        f"  {variable}{' *' if field in REQUIRED else ''}" for field, variable in ENV_NAMES.items()
    )
    command = argparse.ArgumentParser(
        prog="consent-sidecar",
        description="The consent gate in front of any app: a reverse proxy "
        "(CONSENT_UPSTREAM) and forward-auth for nginx, Caddy, Traefik and Envoy (/auth/check).",
        epilog=EPILOG.format(sidecar=sidecar, gate=gate),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--upstream", help="the app to proxy to (CONSENT_UPSTREAM)")
    command.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=int, help="port to listen on (default 4180)")
    command.add_argument("--workers", type=int, help="worker processes (default 1)")
    command.add_argument(
        "--shutdown-timeout",
        type=int,
        help="seconds a stop waits for requests in flight, then cuts them (default 8)",
    )
    command.add_argument(
        "--trusted-proxies",
        help="comma list of addresses/networks allowed to set X-Forwarded-* (default none)",
    )
    return command


def options_and_settings(argv: Sequence[str] | None = None) -> tuple[SidecarOptions, Settings]:
    args = parser().parse_args(argv)
    trusted = (
        tuple(p.strip() for p in args.trusted_proxies.split(",") if p.strip())
        if args.trusted_proxies is not None
        else None
    )
    options = SidecarOptions.from_env(
        upstream=args.upstream,
        host=args.host,
        port=args.port,
        workers=args.workers,
        trusted_proxies=trusted,
        shutdown_timeout=args.shutdown_timeout,
    )
    settings = Settings.from_env()
    # What each worker builds first, checked once here: a bad key in a worker would have
    # uvicorn start it again and again, never exiting.
    AssertionSigner.from_setting(options.assertion_key, settings.secret)
    if options.workers > 1 and not settings.redis_url:
        raise ConfigurationError(
            "--workers above 1 needs CONSENT_REDIS_URL: workers share locks, refresh results "
            "and revocation marks through it"
        )
    return options, settings


def main(argv: Sequence[str] | None = None) -> None:
    try:
        options, _ = options_and_settings(argv)
    except ConfigurationError as exc:
        sys.exit(f"consent-sidecar: {exc}")
    import uvicorn

    # Workers build the app from the environment: hand them what the options said.
    os.environ.update(
        {
            "CONSENT_UPSTREAM": options.upstream,
            "CONSENT_TRUSTED_PROXIES": ",".join(options.trusted_proxies),
        }
    )
    uvicorn.run(
        "consent_middleware.sidecar._app:create_app",
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        # X-Forwarded-* are trusted from CONSENT_TRUSTED_PROXIES only, by the app itself:
        # uvicorn's default would trust 127.0.0.1.
        proxy_headers=False,
        server_header=False,
        # uvicorn's default waits for every request in flight, an endless event stream
        # too: a stop would hang until the orchestrator kills the process.
        timeout_graceful_shutdown=options.shutdown_timeout,
        log_level="info",
        log_config=log_config(),
    )
