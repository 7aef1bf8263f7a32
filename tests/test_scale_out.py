"""Two app processes on different ports sharing one real redis-server and one dev tenant.

The example app runs as a user would run it (``uvicorn example_app.app:app``, configured
only by environment variables); the dev tenant and Redis are real servers on loopback.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt

from consent_middleware._jose import BACKCHANNEL_LOGOUT_EVENT, decrypt, derive_key
from dev_tenant import DevClient, DevTenant
from tests.flow import CLAIM, Browser
from tests.live_server import free_port, serve
from tests.redis_server import RedisServer, redis_server

ROOT = Path(__file__).resolve().parent.parent
SECRET = "scale-out-secret-0123456789abcdef0123"
CLIENT_ID = "scale-app"
CLIENT_SECRET = "scale-client-secret"
# A replica exits in well under a second; this leaves room for a busy CI machine.
STOP_GRACE = 30


@dataclass
class Cluster:
    tenant: DevTenant
    tenant_base: str
    redis: RedisServer
    a: str
    b: str
    store: str

    def grants(self) -> int:
        return sum(path.endswith("/oauth/token") for _, path in self.tenant.requests)

    def logout_token(self, **claims: Any) -> str:
        key = self.tenant.keys.current
        body = {
            "iss": self.tenant.issuer,
            "aud": CLIENT_ID,
            "iat": int(time.time()),
            "jti": uuid.uuid4().hex,
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            **claims,
        }
        headers = {"kid": key.kid, "typ": "logout+jwt"}
        return str(jwt.encode(body, key.as_dict(private=True), algorithm="RS256", headers=headers))


@dataclass
class App:
    """One replica: its process, and the log it writes (to a file: a pipe nobody reads
    fills up and stalls the writer)."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        # uvicorn logs its shutdown steps at INFO ("Waiting for connections to close",
        # "... application shutdown"): a replica that does not stop says where it hangs.
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"a replica ignored SIGTERM for {STOP_GRACE}s:\n{tail}") from None


def start_app(port: int, env: dict[str, str], log: Path) -> App:
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [
                sys.executable,
                "-m",
                "uvicorn",
                "example_app.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    app = App(process, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app did not start: {log.read_text(errors='replace')[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return app
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError("app did not start in time")


@contextmanager
def cluster(store: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(persist=True))
        tenant_port, port_a, port_b = free_port(), free_port(), free_port()
        tenant_base = f"http://127.0.0.1:{tenant_port}"
        # Behind a load balancer every replica has the same public address: here, A's.
        public = f"http://127.0.0.1:{port_a}"
        client = DevClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[f"{public}/auth/callback"],
            logout_urls=[f"{public}/"],
        )
        tenant = DevTenant(tenant_base, [client], CLAIM)
        stack.enter_context(serve(tenant, port=tenant_port))
        env = {
            **os.environ,
            "AUTH0_DOMAIN": tenant_base,
            "AUTH0_CLIENT_ID": CLIENT_ID,
            "AUTH0_CLIENT_SECRET": CLIENT_SECRET,
            "AUTH0_SECRET": SECRET,
            "APP_BASE_URL": public,
            "CONSENT_CLAIM": CLAIM,
            "CONSENT_TERMS_VERSION": "v1",
            "CONSENT_REDIS_URL": redis.url,
            "CONSENT_SESSION_STORE": store,
        }
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="consent-apps-")))
        for port in (port_a, port_b):
            # Each stopped on its own: one that hangs must not leave the other running.
            stack.callback(start_app(port, env, logs / f"{port}.log").stop)
        yield Cluster(tenant, tenant_base, redis, public, f"http://127.0.0.1:{port_b}", store)


@pytest.fixture(scope="module", params=["redis", "cookie"])
def running(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with cluster(request.param) as started:
        yield started


def signed_in(running: Cluster) -> Browser:
    browser = Browser(running.a)
    page = browser.login(browser.go("/dashboard"))
    if "/consent" in str(page.url):
        page = browser.accept(page)
    assert str(page.url) == f"{running.a}/dashboard", page.text[-500:]
    return browser


def test_a_session_made_on_a_is_served_by_b(running: Cluster) -> None:
    browser = signed_in(running)
    try:
        response = browser.client.get(f"{running.b}/dashboard")
        assert response.status_code == 200
        profile = browser.client.get(f"{running.b}/auth/profile").json()
        assert profile[CLAIM]["given"] is True
    finally:
        browser.client.close()


def test_ten_stale_requests_on_two_replicas_make_one_grant(running: Cluster) -> None:
    browser = signed_in(running)
    cookies = dict(browser.client.cookies.items())
    # Another browser accepts: this user's older sessions are stale on every replica.
    other = signed_in(running)
    other.client.post(
        f"{running.a}/consent/withdraw", data={"csrf_token": csrf_token(other, running.a)}
    )
    other.go(f"{running.a}/consent")
    other.accept(other.response)  # type: ignore[arg-type]
    time.sleep(0.3)  # the mark travels through Redis to B
    before = running.grants()

    def fetch(base: str) -> httpx.Response:
        with httpx.Client(cookies=cookies, timeout=20) as client:
            return client.get(f"{base}/api/me", headers={"accept": "application/json"})

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        bases = [running.a, running.b] * 5
        responses = list(pool.map(fetch, bases))
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    assert running.grants() - before == 1
    written = [session_of(r) for r in responses]
    # Every reply that wrote a session wrote the same one. The cookie store must write it on
    # every reply (the cookie is the session); the Redis store keeps the id, and a replica
    # that already reads the new session from Redis has nothing to write.
    assert len(set(written) - {None}) == 1
    if running.store == "cookie":
        assert None not in written
    browser.client.close()
    other.client.close()


def session_of(response: httpx.Response) -> str | None:
    """What the response's session cookie holds: the store id, or the session's tokens."""
    value = response.cookies.get("__session")
    payload = decrypt(value, [derive_key(SECRET)]) if value else None
    if payload is None:
        return None
    if "id" in payload:
        return str(payload["id"])
    return str(payload["tokenSet"]["accessToken"])


def csrf_token(browser: Browser, base: str) -> str:
    page = browser.client.get(f"{base}/consent/withdraw").text
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def test_back_channel_logout_reaches_both_replicas(running: Cluster) -> None:
    browser = signed_in(running)
    user = running.tenant.users.by_email("dev@example.com")
    assert user is not None
    refused = [
        running.logout_token(sub=user["user_id"], aud="another-client"),
        running.logout_token(sub=user["user_id"], nonce="n"),
        running.logout_token(sub=user["user_id"], events={}),
        running.logout_token(sub=user["user_id"], iat=int(time.time()) - 3600),
        running.logout_token(),  # neither sid nor sub
        forged(running, sub=user["user_id"]),
    ]
    for token in refused:
        response = httpx.post(f"{running.a}/auth/backchannel-logout", data={"logout_token": token})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
    assert browser.client.get(f"{running.b}/dashboard").status_code == 200  # nothing ended
    token = running.logout_token(sub=user["user_id"])
    sent = httpx.post(f"{running.a}/auth/backchannel-logout", data={"logout_token": token})
    assert sent.status_code == 200 and sent.headers["cache-control"] == "no-store"
    ended_at = time.monotonic()
    for base in (running.a, running.b):
        while browser.client.get(f"{base}/dashboard").status_code == 200:
            assert time.monotonic() - ended_at < 2, f"{base} still serves the session"
            time.sleep(0.05)
    # The same token again, on the other replica: a replay.
    replay = httpx.post(f"{running.b}/auth/backchannel-logout", data={"logout_token": token})
    assert replay.status_code == 400 and "already used" in replay.text
    browser.client.close()


def forged(running: Cluster, **claims: Any) -> str:
    from tests.keys import SigningKey

    key = SigningKey.generate(str(running.tenant.keys.current.kid))
    body = {
        "iss": running.tenant.issuer,
        "aud": CLIENT_ID,
        "iat": int(time.time()),
        "jti": secrets.token_hex(8),
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        **claims,
    }
    return key.sign(body)


def test_a_back_channel_logout_while_redis_is_away_still_ends_the_session(
    running: Cluster,
) -> None:
    # The provider sends it once (Auth0 does not retry): a 503 would lose it for good.
    browser = signed_in(running)
    user = running.tenant.users.by_email("dev@example.com")
    assert user is not None
    try:
        running.redis.stop()
        token = running.logout_token(sub=user["user_id"])
        sent = httpx.post(f"{running.a}/auth/backchannel-logout", data={"logout_token": token})
        assert sent.status_code == 200, sent.text
        if running.store == "cookie":
            # Ended at once where it was taken, shared store or not.
            assert browser.client.get(f"{running.a}/dashboard").status_code == 307
    finally:
        running.redis.start()
    # The other replica learns it once Redis answers again (the mark is sent again).
    deadline = time.monotonic() + 10
    while browser.client.get(f"{running.b}/dashboard").status_code == 200:
        assert time.monotonic() < deadline, "the other replica still serves the session"
        time.sleep(0.1)
    browser.client.close()


def test_redis_stopped_is_a_503_and_comes_back_without_restart(running: Cluster) -> None:
    browser = signed_in(running)
    try:
        running.redis.stop()
        page = browser.client.get(f"{running.b}/auth/profile")
        api = browser.client.get(f"{running.b}/api/me", headers={"accept": "application/json"})
        dashboard = browser.client.get(f"{running.b}/dashboard")
        # The cookie store does not need Redis to serve a consented request at all.
        for response in (page, api, dashboard):
            assert response.status_code in (200, 503), response.text
            assert response.status_code != 500
        if running.store == "redis":
            # The Redis store needs Redis for every session (the replica's few-second copy
            # was dropped when it changed): a clear 503, page or JSON.
            assert dashboard.status_code == 503 and "Temporarily unavailable" in dashboard.text
            assert api.status_code == 503
            assert api.json()["error"] == "temporarily_unavailable"
    finally:
        running.redis.start()
    deadline = time.monotonic() + 10
    while browser.client.get(f"{running.b}/dashboard").status_code != 200:
        assert time.monotonic() < deadline, "sessions not served again after Redis came back"
        time.sleep(0.1)
    browser.client.close()
