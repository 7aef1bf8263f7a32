#!/usr/bin/env bash
# Set up and run the benchmark: in-process µs per request, then wrk over loopback HTTP
# (bare Starlette / behind the gate / SessionMiddleware + a hand-written check, alternated).
# Extra arguments go to bench/run.py, e.g. scripts/bench.sh --rounds 5 --duration 10
# scripts/bench.sh --ledger [--rows N] times the consent ledger's verify over SQLite instead.
. "$(dirname "$0")/setup.sh" test,bench
if [ "${1:-}" = "--ledger" ]; then
  shift
  exec .venv/bin/python -m bench.ledger "$@"
fi
apt_install wrk:wrk redis-server:redis-server nginx:nginx
exec .venv/bin/python -m bench.run "$@"
