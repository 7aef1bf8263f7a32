"""A real PostgreSQL server (Debian's package) on a free loopback port, in a temp directory.

Debian keeps the server binaries out of PATH (``/usr/lib/postgresql/<major>/bin``), and
PostgreSQL refuses to run as root: when the tests run as root the data directory belongs to
the ``postgres`` system user and the server commands run as that user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.live_server import free_port

USER = "ledger"


def server_binaries() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    assert found, "PostgreSQL is not installed (scripts/test.sh installs it)"
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.data = directory / "data"
        self.bin = server_binaries()
        self.as_owner: list[str] = []
        if os.getuid() == 0:
            # The server refuses root; its files and processes belong to `postgres`.
            shutil.chown(directory, user="postgres", group="postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str) -> str:
        """A URL as a user writes it (the ledger maps it to its async driver)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        subprocess.run(  # noqa: S603 - fixed binaries and arguments
            [*self.as_owner, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
        )

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            USER,
            "--encoding=UTF8",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                # A throw-away cluster: durability costs time and proves nothing here.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
        )

    def create_database(self, name: str) -> str:
        """A fresh database; returns its URL."""
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name
        )
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data))


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    with tempfile.TemporaryDirectory(prefix="consent-postgres-") as directory:
        server = PostgresServer(free_port(), Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
