#!/usr/bin/env bash
# Set up and run the example app. Without AUTH0_DOMAIN it runs against the embedded
# development tenant: open http://localhost:8000 and sign in as dev@example.com / dev-password.
# PORT and HOST choose where it listens (uvicorn's own --port would leave the app and its
# dev tenant naming :8000); DEV_ACCESS_TOKEN_LIFETIME=5 makes access tokens last 5 s.
for arg in "$@"; do
  case "$arg" in
    --port*|--host*|--uds*|--fd*)
      echo "scripts/example.sh: set PORT=... and HOST=... instead of $arg: the app and its dev tenant must know their address" >&2
      exit 2 ;;
  esac
done
# The embedded development tenant lets anyone sign up: it listens on loopback only.
if [ -z "${AUTH0_DOMAIN:-}" ]; then
  case "${HOST:-127.0.0.1}" in
    127.*|localhost|::1) ;;
    *) echo "scripts/example.sh: HOST=$HOST: the embedded development tenant (anyone may sign up) listens on loopback only; set AUTH0_DOMAIN to serve elsewhere" >&2
       exit 2 ;;
  esac
fi
. "$(dirname "$0")/setup.sh" example
# The app's public address follows the port it serves on, unless APP_BASE_URL says otherwise
# (PORT=5901 scripts/example.sh is then http://localhost:5901 end to end).
export APP_BASE_URL="${APP_BASE_URL:-http://localhost:${PORT:-8000}}"
exec .venv/bin/uvicorn example_app.app:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
