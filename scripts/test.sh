#!/usr/bin/env bash
# Set up and run every check: lint, types, and the test suite (real Chromium included).
# Extra arguments go to pytest, e.g. scripts/test.sh -k gate
. "$(dirname "$0")/setup.sh" test
apt_install chromium:chromium node:nodejs
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
