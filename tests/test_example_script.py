"""The README's example command, run as a newcomer runs it, on a port of their choosing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.live_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_example_on_another_port_points_the_dev_tenant_at_that_port() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "APP_BASE_URL"))}
    process = subprocess.Popen(
        ["bash", "scripts/example.sh"],  # noqa: S607 - the project's own script, bash from PATH
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://localhost:{port}"
        deadline = time.monotonic() + 120  # set-up may install packages first
        while True:
            assert process.poll() is None, "scripts/example.sh exited"
            try:
                first = httpx.get(f"{base}/dashboard", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the example did not start"
                time.sleep(0.3)
        assert first.status_code == 307
        login = httpx.get(base + first.headers["location"], timeout=5)
        authorize = urlsplit(login.headers["location"])
        # Before, the dev tenant was always at :8000 and the first login was a 502.
        assert (authorize.hostname, authorize.port) == ("localhost", port)
        form = httpx.get(login.headers["location"], timeout=5, follow_redirects=True)
        assert form.status_code == 200 and 'name="password"' in form.text
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_uvicorns_own_port_option_is_refused_with_the_variable_to_use() -> None:
    # --port alone would leave the app and its dev tenant at :8000: a 502 at the login.
    run = subprocess.run(
        ["bash", "scripts/example.sh", "--port", "5901"],  # noqa: S607 - the project's script
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2 and "set PORT=" in run.stderr


def test_the_example_keeps_the_public_paths_it_is_given_and_its_dev_tenant_on_loopback() -> None:

    from consent_middleware import ConfigurationError
    from example_app.app import create_app

    app = create_app({"CONSENT_PUBLIC_PATHS": "/api/me, /newsletter"})
    public = app.state.settings.public_paths
    assert {"/", "/terms", "/api/me", "/newsletter"} <= set(public)
    # Anyone may sign up at the dev tenant: never served on a public address.
    with pytest.raises(ConfigurationError, match="loopback APP_BASE_URL"):
        create_app({"APP_BASE_URL": "https://app.example.com"})
    assert create_app({"APP_BASE_URL": "http://127.0.0.1:5901"}).state.dev_tenant is not None


def test_the_dev_tenant_is_not_served_on_a_public_interface() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH0_")}
    run = subprocess.run(
        ["bash", "scripts/example.sh"],  # noqa: S607 - the project's script
        cwd=ROOT,
        env={**env, "HOST": "0.0.0.0"},  # noqa: S104 - the address refused here
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2 and "loopback only" in run.stderr
