"""The floor of the sidecar's own libraries: uvicorn serving an aiohttp client that passes
each request to the upstream with no gate, no header rules and no error handling. The
distance from it to the sidecar is the sidecar's own cost; the distance from it to nginx is
the price of a Python proxy. ``uvicorn --factory bench.floor_proxy:app``, with
``BENCH_UPSTREAM`` set to the upstream's base URL."""

from __future__ import annotations

import os

import aiohttp
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL


def app() -> ASGIApp:
    upstream = os.environ["BENCH_UPSTREAM"]
    session: aiohttp.ClientSession | None = None

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        url = URL(upstream + scope["raw_path"].decode("latin-1"), encoded=True)
        async with session.request(scope["method"], url, headers=headers) as answer:
            body = await answer.read()
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": list(answer.raw_headers),
                }
            )
            await send({"type": "http.response.body", "body": body})

    return proxy
