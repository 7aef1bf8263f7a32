"""A real redis-server (Debian's package) on a free loopback port, in a temp directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.live_server import free_port


class RedisServer:
    def __init__(self, port: int, directory: Path, persist: bool = False) -> None:
        self.port = port
        self.directory = directory
        # With persistence, a stop saves the data and a start loads it (a restart, not a wipe).
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "3600 1" if self.persist else "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def redis_server(persist: bool = False) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="consent-redis-") as directory:
        server = RedisServer(free_port(), Path(directory), persist)
        server.start()
        try:
            yield server
        finally:
            server.stop()
