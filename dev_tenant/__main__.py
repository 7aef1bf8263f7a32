"""Run the dev tenant on its own: ``python -m dev_tenant --help``. Development only."""

from __future__ import annotations

import argparse
import secrets

import uvicorn

from dev_tenant.records import DevClient
from dev_tenant.tenant import DevTenant


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dev_tenant",
        description="An Auth0-compatible development tenant for one application. "
        "Everything lives in memory; sign in as dev@example.com / dev-password.",
    )
    parser.add_argument("--port", type=int, default=4181)
    parser.add_argument("--app", required=True, help="the application's base URL")
    parser.add_argument("--client-id", default="dev-app")
    parser.add_argument("--client-secret", default=secrets.token_urlsafe(24))
    parser.add_argument("--claim", default="https://consent.example.com/consent")
    parser.add_argument(
        "--access-token-lifetime",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="how long access tokens last (a few seconds shows renewal at work)",
    )
    parser.add_argument(
        "--api",
        action="append",
        default=[],
        metavar="IDENTIFIER",
        help="an API identifier tokens may be asked for with audience (repeatable)",
    )
    args = parser.parse_args()
    app = args.app.rstrip("/")
    client = DevClient(
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=[f"{app}/auth/callback"],
        logout_urls=[f"{app}/"],
        backchannel_logout_uri=f"{app}/auth/backchannel-logout",
    )
    tenant = DevTenant(
        f"http://localhost:{args.port}",
        [client],
        args.claim,
        access_token_lifetime=args.access_token_lifetime,
        apis=args.api,
    )
    uvicorn.run(tenant, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
