"""The gate with many distinct users: N users round robin, each with their own consented
session, over loopback HTTP.

For N = 1, 1,000, 20,000 and 100,000 users, every request carries one user's cookies for
both the gate and the hand-written peer (the same header for each app, so each parses the
same request); Debian's ``wrk`` cycles through the users with a Lua script, the apps
alternate round by round, and each app's CPU time per request and resident memory are read
from ``/proc``. Run by ``scripts/bench.sh``; ``python -m bench.users --users 1000,20000`` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
from pathlib import Path

from itsdangerous import TimestampSigner

from bench.apps import CLAIMS, SECRET, bench_session, settings
from bench.run import Measured, measured
from consent_middleware._session import CookieSessionStore

APPS = ("bare", "gate", "hand")
LABELS = {
    "bare": "bare Starlette",
    "gate": "behind the gate",
    "hand": "SessionMiddleware + hand-written check",
}
DEFAULT_USERS = (1, 1_000, 20_000, 100_000)

# Reads one Cookie header per line and sends them in turn, connection after connection.
LUA = """
local headers = {}
local count = 0
local next_index = 0
function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    headers[count] = line
  end
end
function request()
  next_index = next_index % count + 1
  return wrk.format("GET", "/", {["Cookie"] = headers[next_index]})
end
"""


async def cookie_lines(users: int) -> list[str]:
    """One Cookie header per user: the gate's session and the hand-written peer's."""
    store = CookieSessionStore(settings())
    signer = TimestampSigner(SECRET)
    lines = []
    for i in range(users):
        claims: dict[str, object] = {
            **CLAIMS,
            "sub": f"auth0|user{i:06d}",
            "email": f"user{i}@example.com",
        }
        values = await store.save(bench_session(claims), {})
        gate = "; ".join(v.decode().split(";", 1)[0] for v in values)
        data = base64.b64encode(json.dumps({"user": claims}).encode())
        hand = "session=" + signer.sign(data).decode()
        lines.append(f"{gate}; {hand}")
    return lines


def cookie_file(users: int, directory: Path) -> Path:
    path = directory / f"cookies-{users}.txt"
    if not path.exists():
        path.write_text("\n".join(asyncio.run(cookie_lines(users))) + "\n")
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wrk(
    port: int, script: Path, cookies: Path, duration: int, connections: int, pid: int | None = None
) -> Measured:
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
        f"http://127.0.0.1:{port}/", "--", str(cookies),
    ]  # fmt: skip
    return measured(cmd, pid)


def table(users: tuple[int, ...], rounds: int, duration: int, connections: int) -> list[str]:
    from bench.run import _serve, medians, ratio

    ports = {"bare": 18301, "gate": 18302, "hand": 18303}
    rows = [
        "| users | app | requests/s | p50 ms | p99 ms | server CPU µs/request | RSS MB "
        "| vs bare | vs hand-written |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-users-") as directory:
        folder = Path(directory)
        script = folder / "users.lua"
        script.write_text(LUA)
        for count in users:
            cookies = cookie_file(count, folder)
            # Fresh processes per N: memory is what N users leave behind, nothing earlier.
            procs = {name: _serve(name, port) for name, port in ports.items()}
            results: dict[str, list[Measured]] = {n: [] for n in APPS}
            rss: dict[str, float] = {}
            try:
                for name in APPS:  # untimed warm-up: one pass over the users where it fits
                    _wrk(ports[name], script, cookies, 2, connections)
                for _ in range(rounds):
                    for name in APPS:
                        pid = procs[name].pid
                        run = _wrk(ports[name], script, cookies, duration, connections, pid)
                        results[name].append(run)
                rss = {name: rss_mb(proc.pid) for name, proc in procs.items()}
            finally:
                for proc in procs.values():
                    proc.terminate()
                    proc.wait(timeout=10)
            med = medians(results)
            for name in APPS:
                rps, p50, p99, cpu = med[name]
                rows.append(
                    f"| {count:,} | {LABELS[name]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | "
                    f"{cpu:.1f} | {rss[name]:.0f} | {ratio(results, name, 'bare'):.2f} | "
                    f"{ratio(results, name, 'hand'):.2f} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", default=",".join(str(n) for n in DEFAULT_USERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    users = tuple(int(n) for n in args.users.split(","))
    print("\n".join(table(users, args.rounds, args.duration, args.connections)))


if __name__ == "__main__":
    main()
