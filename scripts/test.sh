#!/usr/bin/env bash
# Set up and run every check: lint, types, and the test suite (real Chromium included).
# Extra arguments go to pytest, e.g. scripts/test.sh -k gate
. "$(dirname "$0")/setup.sh" test
apt_install chromium:chromium node:nodejs npm:npm redis-server:redis-server nginx:nginx caddy:caddy
# The ledger's tests run a real PostgreSQL server; Debian keeps its binaries off PATH.
apt_install '/usr/lib/postgresql/*/bin/initdb:postgresql'
# The independent, OpenID Certified provider the integration tests also log in against.
npm ci --prefix tests/certified_provider --no-audit --no-fund --loglevel=error
# nextjs-auth0 v4 (pinned), whose own code reads and writes session cookies in the tests.
npm ci --prefix tests/nextjs_auth0 --no-audit --no-fund --loglevel=error
# The reference Next.js app, built and driven in Chromium behind the sidecar.
npm ci --prefix example_app/nextjs --no-audit --no-fund --loglevel=error
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
