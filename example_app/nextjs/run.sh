#!/usr/bin/env bash
# The Next.js example behind consent-sidecar, with the dev tenant: one command.
#   example_app/nextjs/run.sh   then open http://localhost:4180 (dev@example.com / dev-password)
# Ports: 4180 the sidecar (what the browser talks to), 3000 Next.js, 4181 the dev tenant;
# SIDECAR_PORT, NEXT_PORT and TENANT_PORT choose others.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../../scripts/setup.sh" "sidecar,example"
apt_install node:nodejs npm:npm
npm ci --prefix "$here" --no-audit --no-fund --loglevel=error

SIDECAR_PORT="${SIDECAR_PORT:-4180}" NEXT_PORT="${NEXT_PORT:-3000}" TENANT_PORT="${TENANT_PORT:-4181}"
export AUTH0_SECRET="${AUTH0_SECRET:-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(32))')}"
export AUTH0_DOMAIN="http://localhost:$TENANT_PORT" AUTH0_CLIENT_ID="nextjs"
export AUTH0_CLIENT_SECRET="${AUTH0_CLIENT_SECRET:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')}"
export APP_BASE_URL="http://localhost:$SIDECAR_PORT" CONSENT_SIDECAR_PORT="$SIDECAR_PORT"
export CONSENT_CLAIM="https://consent.example.com/consent" CONSENT_TERMS_VERSION="${CONSENT_TERMS_VERSION:-2026-11}"
export CONSENT_TERMS_URL="$APP_BASE_URL/terms" CONSENT_UPSTREAM="http://127.0.0.1:$NEXT_PORT"
export NEXT_TELEMETRY_DISABLED=1

trap 'kill 0' EXIT
# "--name=value": a generated secret may start with "-", which argparse would take for an option.
.venv/bin/python -m dev_tenant --port "$TENANT_PORT" --app "$APP_BASE_URL" \
  --client-id="$AUTH0_CLIENT_ID" --client-secret="$AUTH0_CLIENT_SECRET" --claim="$CONSENT_CLAIM" &
# nextjs-auth0 refuses a localhost domain; Next.js never calls the provider here (the
# sidecar does every login and refresh), so it gets a placeholder. In production both get
# your real AUTH0_DOMAIN.
(cd "$here" && export AUTH0_DOMAIN="dev-tenant.example.com" \
  && npx next build >/dev/null && npx next start -p "$NEXT_PORT" -H 127.0.0.1) &
.venv/bin/consent-sidecar
