"""Our session cookie and nextjs-auth0 v4's, read and written by nextjs-auth0's own code
(@auth0/nextjs-auth0, pinned in tests/nextjs_auth0/, run on Node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from consent_middleware import Session, TokenSet
from consent_middleware._session import CookieSessionStore
from tests.conftest import CLAIM, make_settings

HERE = Path(__file__).parent / "nextjs_auth0"
SETTINGS = make_settings()


def nextjs_auth0(mode: str, request: dict[str, Any]) -> Any:
    node = shutil.which("node")
    assert node, "Node.js is not installed (scripts/test.sh installs it)"
    assert (HERE / "node_modules").is_dir(), "run: npm ci --prefix tests/nextjs_auth0"
    done = subprocess.run(  # noqa: S603 - Node and our own script
        [node, "session.mjs", mode],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "APP_BASE_URL": SETTINGS.app_base_url,
            "AUTH0_DOMAIN": SETTINGS.domain,
            "AUTH0_SECRET": SETTINGS.secret,
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def cookie_header(set_cookies: list[bytes] | list[str]) -> str:
    pairs = []
    for value in set_cookies:
        text = value.decode() if isinstance(value, bytes) else value
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(text)
        for name, morsel in cookie.items():
            if morsel["max-age"] != "0" and morsel.value:
                pairs.append(f"{name}={morsel.value}")
    return "; ".join(pairs)


def ours(name_length: int) -> Session:
    return Session.from_claims(
        {
            "sub": "auth0|interop",
            "sid": "idp-sid-1",
            "email": "i@example.com",
            "name": "N" * name_length,
            CLAIM: {"given": True, "version": "v2", "date": "2026-11-25T00:00:00.000Z"},
        },
        TokenSet("at-1", "id.token.1", "rt-1", int(time.time()) + 3600, "openid offline_access"),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("size", [10, 6000], ids=["small", "chunked"])
async def test_nextjs_auth0_reads_our_session(size: int) -> None:
    written = await CookieSessionStore(SETTINGS).save(ours(size), {})
    if size > 1000:
        assert any(v.startswith(b"__session__1=") for v in written)
    read = nextjs_auth0("read", {"cookie": cookie_header(written)})
    assert read is not None, "nextjs-auth0 saw no session"
    assert read["user"]["sub"] == "auth0|interop" and len(read["user"]["name"]) == size
    assert read["user"][CLAIM]["version"] == "v2"
    assert read["tokenSet"]["accessToken"] == "at-1"
    assert read["tokenSet"]["refreshToken"] == "rt-1"
    assert read["internal"]["sid"] == "idp-sid-1"


@pytest.mark.anyio
@pytest.mark.parametrize("size", [10, 6000], ids=["small", "chunked"])
async def test_we_read_what_nextjs_auth0_writes_and_keep_its_fields(size: int) -> None:
    now = int(time.time())
    theirs = {
        "user": {"sub": "auth0|next", "name": "M" * size, CLAIM: {"given": True, "version": "v2"}},
        "tokenSet": {
            "accessToken": "at-n",
            "idToken": "id.token.n",
            "refreshToken": "rt-n",
            "expiresAt": now + 3600,
            "scope": "openid offline_access",
            "requestedScope": "openid profile email offline_access",
            "audience": "https://api.example.com",
            "token_type": "Bearer",
        },
        "accessTokens": [
            {"accessToken": "at-api2", "audience": "https://api2.example.com", "expiresAt": now}
        ],
        "internal": {"sid": "idp-sid-n", "createdAt": now - 5},
    }
    written = nextjs_auth0("write", {"session": theirs})
    cookies = {
        name: morsel.value
        for value in written
        for name, morsel in _parsed(value).items()
        if morsel["max-age"] != "0" and morsel.value
    }
    if size > 1000:
        assert "__session__1" in cookies  # nextjs-auth0 chunked it
    store = CookieSessionStore(SETTINGS)
    session = await store.load(cookies)
    assert session is not None and session.user["sub"] == "auth0|next"
    assert session.sid == "idp-sid-n" and session.token_set.refresh_token == "rt-n"
    # Rolled and refreshed by us, then read back by nextjs-auth0: nothing of theirs lost.
    refreshed = session.refreshed(
        {**session.user, CLAIM: {"given": False, "withdrawn": True, "version": "v2"}},
        TokenSet("at-new", "id.token.new", "rt-new", now + 60, "openid offline_access"),
    )
    rewritten = await CookieSessionStore(SETTINGS).save(refreshed, cookies)
    back = nextjs_auth0("read", {"cookie": cookie_header(rewritten)})
    assert back is not None
    assert back["user"][CLAIM]["withdrawn"] is True
    assert back["tokenSet"]["accessToken"] == "at-new"
    assert back["tokenSet"]["refreshToken"] == "rt-new"
    assert back["tokenSet"]["requestedScope"] == "openid profile email offline_access"
    assert back["tokenSet"]["audience"] == "https://api.example.com"
    assert back["accessTokens"] == theirs["accessTokens"]
    assert back["internal"]["sid"] == "idp-sid-n"
    assert back["internal"]["createdAt"] == now - 5
    # Every cookie of their layout is rewritten or deleted: no stale chunk is left to mix
    # with the new ones.
    touched = {name for value in rewritten for name in _parsed(value.decode())}
    assert set(cookies) <= touched


def _parsed(value: str) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(value)
    return cookie
