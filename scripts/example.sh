#!/usr/bin/env bash
# Set up and run the example app. Without AUTH0_DOMAIN it runs against the embedded
# development tenant: open http://localhost:8000 and sign in as dev@example.com / dev-password.
. "$(dirname "$0")/setup.sh" example
exec .venv/bin/uvicorn example_app.app:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
