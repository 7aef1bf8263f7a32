"""Benchmark: what the gate costs per request, in-process and over loopback HTTP.

    python -m bench.run [--rounds 3] [--duration 5] [--connections 16]

Prints markdown tables. Over HTTP, uvicorn serves each app in turn and Debian's `wrk`
loads it from another process; the apps alternate round by round (A/B/C, A/B/C, ...)
so drift in machine load hits them all alike, and ratios are reported beside absolutes,
with each server's CPU time per request (read from /proc around each wrk run).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.apps import APPS, CLAIMS, gated_token, request_cookie
from consent_middleware import ConsentMiddleware
from consent_middleware._admission_cache import AdmissionCache
from consent_middleware._session import CookieSessionStore
from tests.redis_server import redis_server

LABELS = {
    "bare": "(a) bare Starlette",
    "gate": "(b) behind the gate, consented session",
    "hand": "(c) SessionMiddleware + hand-written claim check",
    "redis": "(d) behind the gate, session in Redis",
    "vary": "(e) a middleware that only adds `Vary: Cookie`",
    "spin": "(f) a middleware that only computes for 5 µs",
    "lookup": "(g) a middleware that only looks the session cookie up",
}


# ---- in-process -------------------------------------------------------------------------


async def _call(app: Any, scope: dict[str, Any]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(dict(scope), receive, send)


def _scope(cookie: str) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"text/html")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }


async def _per_request_us(name: str, cookie: str, iterations: int) -> float:
    app = gated_token() if name == "token" else APPS[name]()
    scope = _scope(cookie)
    for _ in range(200):  # warm up: builds the middleware stack, fills the caches
        await _call(app, scope)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            await _call(app, scope)
        best = min(best, (time.perf_counter() - start) / iterations * 1e6)
    return best


async def _cold_us(name: str, users: int = 2_000, rounds: int = 5) -> float:
    """Per request with ``users`` distinct sessions in turn; for the gate with a cache of
    admissions that holds one of them, so every other request takes the full check
    (decrypt, summarise, decide) and asks the doorkeeper, as a full cache does: the cost
    of a session it has not seen recently."""
    from bench import users as many

    app = APPS[name]()
    scopes = [_scope(line) for line in await many.cookie_lines(users)]
    await _call(app, scopes[0])  # builds the middleware stack
    stack: Any = app.middleware_stack
    while stack is not None and not isinstance(stack, ConsentMiddleware):
        stack = getattr(stack, "app", None)
    if stack is not None:
        stack._admissions.cache = AdmissionCache(1000)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for scope in scopes:
            await _call(app, scope)
        best = min(best, (time.perf_counter() - start) / users * 1e6)
    return best


async def _outbound_calls_and_memory(sessions: int) -> tuple[int, int, float, float]:
    """Zero I/O per consented request, and memory that stops growing with more users."""
    calls = 0

    def count(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503)

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    from bench.apps import sealed_cookie, settings

    client = httpx.AsyncClient(transport=httpx.MockTransport(count))
    gate = ConsentMiddleware(hello, settings=settings(), http_client=client)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    half = 0.0
    store = CookieSessionStore(settings())
    for i in range(sessions):
        cookie = await sealed_cookie(store, {**CLAIMS, "sub": f"auth0|user{i}"})
        await _call(gate, _scope(cookie))
        if i == sessions // 2:
            half = (tracemalloc.get_traced_memory()[0] - before) / 1e6
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await client.aclose()
    cached = len(gate._admissions.cache)
    return calls, cached, half, (after - before) / 1e6


# ---- over HTTP with wrk -------------------------------------------------------------------

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
# wrk's "Latency Distribution" lines ("     50%  412.00us"); wrk2 prints "50.000%".
_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_REQUESTS = re.compile(r"(\d+) requests in")
# requests/s, p50 ms, p99 ms, server CPU µs per request
Measured = tuple[float, float, float, float]


def _serve(name: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_APP": name}
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.apps:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    _wait(proc, port)
    return proc


def _wait(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until something answers HTTP on ``port``; a process that dies or stays silent fails."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server for port {port} did not start")


def _wrk(
    port: int, cookie: str, duration: int, connections: int, pid: int | None = None
) -> Measured:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    if cookie:
        cmd[1:1] = ["-H", f"Cookie: {cookie}"]
    return measured(cmd, pid)


def measured(cmd: list[str], pid: int | None) -> Measured:
    """Run ``wrk``: requests/s, p50 and p99 in ms, and when the server's ``pid`` is given
    its CPU time per request in µs. wrk shares the two cores with the server, so
    requests/s also moves with wrk's own share; the CPU time per request is the server's
    cost alone (NaN without a pid)."""
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: S603
    cpu = cpu_seconds(pid) - before if pid else math.nan
    rps = float(_RPS.search(out).group(1))  # type: ignore[union-attr]
    requests = int(_REQUESTS.search(out).group(1))  # type: ignore[union-attr]
    lat = {p: float(v) * _UNIT[u] for p, v, u in _LAT.findall(out)}
    return rps, lat["50"], lat["99"], cpu / requests * 1e6


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time process ``pid`` has used (proc(5): utime and stime,
    fields 14 and 15 of /proc/PID/stat, counted after the parenthesised command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ratio(results: dict[str, list[Measured]], name: str, other: str) -> float:
    """``name``'s requests/s over ``other``'s: taken within each round (the apps of one
    round run minutes apart at most, so a change in the machine's load meets both), then
    the median over the rounds."""
    return statistics.median(
        a[0] / b[0] for a, b in zip(results[name], results[other], strict=True)
    )


def _http_table(rounds: int, duration: int, connections: int) -> list[str]:
    results: dict[str, list[Measured]] = {n: [] for n in APPS}
    ports = {
        "bare": 18101, "gate": 18102, "hand": 18103, "redis": 18104, "vary": 18105, "spin": 18106,
        "lookup": 18107,
    }  # fmt: skip
    procs = {n: _serve(n, p) for n, p in ports.items()}
    try:
        cookies = {name: request_cookie(name) for name in APPS}
        for name in APPS:  # one untimed warm-up each
            _wrk(ports[name], cookies[name], 1, connections)
        for _ in range(rounds):
            for name in APPS:
                run = _wrk(ports[name], cookies[name], duration, connections, procs[name].pid)
                results[name].append(run)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=10)
    med = medians(results)
    rows = [
        "| app | requests/s (median) | p50 ms | p99 ms | server CPU µs/request | added vs (a) "
        "| vs (a) | vs (b) | vs (c) | vs (e) | vs (g) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in APPS:
        rps, p50, p99, cpu = med[name]
        others = ("bare", "gate", "hand", "vary", "lookup")
        ratios = " | ".join(f"{ratio(results, name, other):.2f}" for other in others)
        rows.append(
            f"| {LABELS[name]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} "
            f"| {cpu - med['bare'][3]:+.1f} | {ratios} |"
        )
    each = ", ".join(f"{n}: " + "/".join(f"{r[0]:,.0f}" for r in rs) for n, rs in results.items())
    rows.append(f"\nPer round requests/s: {each}")
    return rows


def medians(results: dict[str, list[Measured]]) -> dict[str, Measured]:
    """Each app's median of each measure over the rounds."""
    return {
        name: (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
            statistics.median(r[3] for r in runs),
        )
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument(
        "--users", default="1,1000,20000,100000", help="distinct users for the many-users table"
    )
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument(
        "--sidecar-connections", type=int, default=64, help="connections for the sidecar table"
    )
    parser.add_argument(
        "--stream-mb", type=int, default=1024, help="body size for the streaming memory table"
    )
    args = parser.parse_args()

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}\n"
    )
    # (d) keeps its sessions in a real Redis on loopback, started here for the run.
    redis = ExitStack()
    server = redis.enter_context(redis_server())
    os.environ["BENCH_REDIS_URL"] = server.url
    with redis:
        _report(args)


def _report(args: argparse.Namespace) -> None:
    us = {n: asyncio.run(_per_request_us(n, request_cookie(n), args.iterations)) for n in APPS}
    print("In-process, direct ASGI calls (best of 5 runs):\n")
    print("| app | µs per request | added vs (a) |\n| --- | ---: | ---: |")
    for name in APPS:
        print(f"| {LABELS[name]} | {us[name]:.1f} | {us[name] - us['bare']:+.1f} |")
    own = us["gate"] - us["vary"]
    print(f"| (b) beyond (e): the gate's own work for a known session | | {own:+.1f} |")
    past = us["gate"] - us["lookup"]
    print(f"| (b) beyond (g): the gate's decisions and what it hands over | | {past:+.1f} |")
    token = asyncio.run(_per_request_us("token", request_cookie("gate"), args.iterations))
    print(
        f"| (b) and the route calls `get_access_token()` (valid token: no I/O) | {token:.1f} "
        f"| {token - us['bare']:+.1f} |"
    )
    cold = {n: asyncio.run(_cold_us(n)) for n in ("bare", "gate", "hand")}
    print(
        f"| (b) a session the gate has not seen (2,000 users in turn, its cache full) "
        f"| {cold['gate']:.1f} | {cold['gate'] - cold['bare']:+.1f} |\n"
        f"| (c) the same 2,000 users in turn | {cold['hand']:.1f} "
        f"| {cold['hand'] - cold['bare']:+.1f} |"
    )
    users = tuple(int(n) for n in args.users.split(","))
    print()
    for count in users:
        calls, cached, half, full = asyncio.run(_outbound_calls_and_memory(count))
        print(
            f"- {count:,} distinct consented sessions: **{calls} IdP/Management calls**; "
            f"{cached:,} admissions cached (the weight bound); traced memory growth "
            f"{half:.1f} MB after {count // 2:,} sessions, {full:.1f} MB after {count:,}."
        )
    print()
    if args.no_http:
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk (or run with --no-http)")
    print(
        f"Over loopback HTTP: uvicorn (1 worker) + wrk -c{args.connections}, "
        f"{args.rounds} alternating rounds of {args.duration}s; requests/s are medians, each "
        "ratio is taken within a round, then the median over the rounds:\n"
    )
    print("\n".join(_http_table(args.rounds, args.duration, args.connections)))
    from bench import users as many

    print(
        f"\nMany users: N distinct consented users round robin (wrk -c{args.connections} with "
        f"a Lua script), the apps alternated, {args.rounds} rounds of {args.duration}s; RSS "
        "after the runs:\n"
    )
    print("\n".join(many.table(users, args.rounds, args.duration, args.connections)))
    from bench.sidecar import table

    print(
        f"\nThe sidecar as a reverse proxy (1 worker), wrk -c{args.sidecar_connections} and "
        f"-c1, {args.rounds} alternating rounds of {args.duration}s:\n"
    )
    print("\n".join(table(args.rounds, args.duration, args.sidecar_connections)))
    from bench import streaming

    print(f"\nA {args.stream_mb:,} MB body through the sidecar, each way:\n")
    print("\n".join(streaming.table(args.stream_mb)))


if __name__ == "__main__":
    main()
