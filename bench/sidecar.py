"""Benchmark of the sidecar as a reverse proxy, beside the floor a proxy can reach.

(a) a trivial upstream served directly; (b) the same through consent-sidecar with a
consented session; (c) the same through Debian's nginx ``proxy_pass``. Alternated round by
round, throughput at many connections and latency at one. Run by ``scripts/bench.sh``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.apps import SECRET, VERSION, gate_cookie, settings
from bench.run import Measured, _serve, _wait, _wrk, medians

LABELS = {
    "direct": "(a) the upstream, directly",
    "sidecar": "(b) through consent-sidecar, consented session",
    "floor": "(b0) uvicorn + aiohttp client, no gate (the libraries' floor)",
    "nginx": "(c) through nginx proxy_pass",
}


@contextmanager
def _process(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(command, env=env)  # noqa: S603 - fixed programs and arguments
    try:
        _wait(proc, port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _sidecar(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory",
        "consent_middleware.sidecar._app:create_app", "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--no-proxy-headers",
    ]  # fmt: skip


def _sidecar_env(upstream: int) -> dict[str, str]:
    base = settings()
    return {
        **os.environ,
        "AUTH0_DOMAIN": base.domain,
        "AUTH0_CLIENT_ID": base.client_id,
        "AUTH0_CLIENT_SECRET": base.client_secret,
        "AUTH0_SECRET": SECRET,
        # The cookie was made for this address: the sidecar must be configured the same.
        "APP_BASE_URL": base.app_base_url,
        "CONSENT_CLAIM": base.consent_claim,
        "CONSENT_TERMS_VERSION": VERSION,
        "CONSENT_TERMS_URL": base.terms_url,
        "CONSENT_UPSTREAM": f"http://127.0.0.1:{upstream}",
    }


@contextmanager
def _nginx(upstream: int, port: int) -> Iterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as directory:
        prefix = Path(directory)
        (prefix / "nginx.conf").write_text(
            f"""daemon off; pid {prefix}/pid; error_log {prefix}/error.log;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p;
    fastcgi_temp_path {prefix}/f; uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        with _process([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], port):
            yield


def table(rounds: int, duration: int, connections: int) -> list[str]:
    ports = {"direct": 18201, "sidecar": 18202, "floor": 18204, "nginx": 18203}
    cookie = gate_cookie()
    results: dict[str, list[Measured]] = {n: [] for n in ports}
    single: dict[str, list[float]] = {n: [] for n in ports}
    with ExitStack() as stack:
        stack.enter_context(_serve_context("bare", ports["direct"]))
        sidecar = _sidecar(ports["sidecar"])
        env = _sidecar_env(ports["direct"])
        stack.enter_context(_process(sidecar, ports["sidecar"], env))
        stack.enter_context(_nginx(ports["direct"], ports["nginx"]))
        floor = [
            sys.executable, "-m", "uvicorn", "--factory", "bench.floor_proxy:app",
            "--port", str(ports["floor"]), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        floor_env = {**os.environ, "BENCH_UPSTREAM": f"http://127.0.0.1:{ports['direct']}"}
        stack.enter_context(_process(floor, ports["floor"], floor_env))
        for port in ports.values():  # untimed warm-up
            _wrk(port, cookie, 1, connections)
        for _ in range(rounds):
            for name, port in ports.items():
                results[name].append(_wrk(port, cookie, duration, connections))
                single[name].append(_wrk(port, cookie, duration, 1)[1])
    med = medians(results)
    p50_one = {n: statistics.median(v) for n, v in single.items()}
    rows = [
        f"| path | requests/s at {connections} conn | p99 ms | p50 ms at 1 conn "
        "| added p50 vs (a) | vs (a) | vs (c) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ports:
        rps, _, p99, _ = med[name]
        rows.append(
            f"| {LABELS[name]} | {rps:,.0f} | {p99:.2f} | {p50_one[name]:.3f} | "
            f"{p50_one[name] - p50_one['direct']:+.3f} | {rps / med['direct'][0]:.2f} | "
            f"{rps / med['nginx'][0]:.2f} |"
        )
    return rows


@contextmanager
def _serve_context(name: str, port: int) -> Iterator[None]:
    proc = _serve(name, port)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
