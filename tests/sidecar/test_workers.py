"""``consent-sidecar --workers 2`` with Redis, as an operator runs it: the real command in a
process of its own, the dev tenant and an upstream on loopback, and a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dev_tenant import DevClient, DevTenant
from tests.flow import CLAIM, Browser
from tests.live_server import free_port, serve
from tests.redis_server import RedisServer

SECRET = "workers-secret-0123456789abcdef01234567"


async def who(request: Request) -> Response:
    return JSONResponse({"user": request.headers.get("x-auth-request-user")})


UPSTREAM = Starlette(routes=[Route("/{path:path}", who)])


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.fixture(scope="module")
def sidecar(
    redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, DevTenant]]:
    log = tmp_path_factory.mktemp("workers") / "sidecar.log"
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(UPSTREAM))
        tenant_port, port = free_port(), free_port()
        base, tenant_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{tenant_port}"
        client = DevClient(
            client_id="workers",
            client_secret="workers-client-secret",
            redirect_uris=[f"{base}/auth/callback"],
            logout_urls=[f"{base}/"],
        )
        tenant = DevTenant(tenant_base, [client], CLAIM)
        stack.enter_context(serve(tenant, port=tenant_port))
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE") or k == "PATH"},
            "AUTH0_DOMAIN": tenant_base,
            "AUTH0_CLIENT_ID": "workers",
            "AUTH0_CLIENT_SECRET": "workers-client-secret",
            "AUTH0_SECRET": SECRET,
            "APP_BASE_URL": base,
            "CONSENT_CLAIM": CLAIM,
            "CONSENT_TERMS_VERSION": "v1",
            "CONSENT_TERMS_URL": f"{upstream}/terms",
            # A database of its own on the shared server: nothing left by other tests.
            "CONSENT_REDIS_URL": redis.url.rsplit("/", 1)[0] + "/5",
            "CONSENT_UPSTREAM": upstream,
        }
        command = [sys.executable, "-m", "consent_middleware.sidecar", "--workers", "2"]
        output = stack.enter_context(log.open("wb"))
        process = subprocess.Popen(  # noqa: S603 - this interpreter, the package's module
            [*command, "--port", str(port)], env=env, stdout=output, stderr=output
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert len(children(process.pid)) >= 2, "expected two worker processes"
            yield base, tenant
        finally:
            process.terminate()
            process.wait(15)


def test_two_workers_share_sessions_and_logouts(sidecar: tuple[str, DevTenant]) -> None:
    base, tenant = sidecar
    browser = Browser(base)
    page = browser.login(browser.go("/dashboard"))
    page = browser.accept(page)
    assert page.status_code == 200 and str(page.url) == f"{base}/dashboard", page.text
    user = tenant.users.by_email("dev@example.com")
    assert user is not None
    cookies = dict(browser.client.cookies.items())
    # New connections each time: the kernel spreads them over both workers.
    for _ in range(20):
        answer = httpx.get(f"{base}/page", cookies=cookies, headers={"accept": "text/html"})
        assert answer.json() == {"user": user["user_id"]}
    browser.go("/auth/logout")
    browser.client.close()
    # Logged out on one worker, the same cookie replayed is refused on every worker.
    for _ in range(20):
        replay = httpx.get(f"{base}/page", cookies=cookies, headers={"accept": "application/json"})
        assert replay.status_code == 401, replay.text
