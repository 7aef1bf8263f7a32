"""Memory while a 1 GB body streams through the sidecar, each way.

The upstream (``uvicorn --factory bench.streaming:upstream``) counts what it is sent and
streams what it is asked for in 1 MB chunks; the sidecar's resident memory is sampled from
``/proc`` while the bodies flow. Flat means the proxy holds a chunk at a time, not the body.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.apps import gate_cookie

CHUNK = 1 << 20


async def _sink(request: Request) -> Response:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
    return JSONResponse({"received": received})


async def _source(request: Request) -> Response:
    megabytes = int(request.query_params.get("mb", "1"))
    block = b"d" * CHUNK

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(megabytes):
            yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream")


def upstream() -> Starlette:
    return Starlette(routes=[Route("/sink", _sink, methods=["POST"]), Route("/source", _source)])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def _sampled(pid: int) -> Iterator[list[float]]:
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def measure(sidecar_port: int, sidecar_pid: int, megabytes: int) -> list[str]:
    """Rows for the README: RSS before, peak during upload and download, and throughput."""
    base = f"http://127.0.0.1:{sidecar_port}"
    cookie = gate_cookie()
    rows = ["| direction | body | sidecar RSS before | peak | growth | MB/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    with httpx.Client(headers={"cookie": cookie}, timeout=120) as client:
        client.get(f"{base}/source", params={"mb": 1})  # warm: pool and caches
        before = rss_mb(sidecar_pid)

        def upload() -> Iterator[bytes]:
            block = b"u" * CHUNK
            for _ in range(megabytes):
                yield block

        with _sampled(sidecar_pid) as samples:
            started = time.perf_counter()
            sent = client.post(f"{base}/sink", content=upload())
            seconds = time.perf_counter() - started
        if sent.json().get("received") != megabytes * CHUNK:
            sys.exit(f"upload through the sidecar arrived short: {sent.text}")
        rows.append(_row("upload", megabytes, before, samples, seconds))
        before = rss_mb(sidecar_pid)
        with _sampled(sidecar_pid) as samples:
            started = time.perf_counter()
            received = 0
            with client.stream("GET", f"{base}/source", params={"mb": megabytes}) as answer:
                for chunk in answer.iter_raw():
                    received += len(chunk)
            seconds = time.perf_counter() - started
        if received != megabytes * CHUNK:
            sys.exit(f"download through the sidecar arrived short: {received} bytes")
        rows.append(_row("download", megabytes, before, samples, seconds))
    return rows


def _row(direction: str, megabytes: int, before: float, samples: list[float], s: float) -> str:
    peak = max([before, *samples])
    return (
        f"| {direction} | {megabytes:,} MB | {before:.1f} MB | {peak:.1f} MB | "
        f"{peak - before:+.1f} MB | {megabytes / s:,.0f} |"
    )


def table(megabytes: int) -> list[str]:
    from bench.run import _wait
    from bench.sidecar import _process, _sidecar, _sidecar_env

    upstream_port, sidecar_port = 18211, 18212
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.streaming:upstream",
        "--port", str(upstream_port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with ExitStack() as stack:
        stack.enter_context(_process(command, upstream_port))
        import subprocess

        sidecar = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            _sidecar(sidecar_port), env=_sidecar_env(upstream_port)
        )
        stack.callback(sidecar.wait, 10)
        stack.callback(sidecar.terminate)
        _wait(sidecar, sidecar_port)
        return measure(sidecar_port, sidecar.pid, megabytes)
