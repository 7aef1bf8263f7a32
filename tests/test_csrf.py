"""The forms' CSRF check: the session-bound token and the Origin, or Referer, header."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from consent_middleware._csrf import CSRF
from tests.test_session import make_session

APP = "https://app.example.com"


def post(**headers: str) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/consent", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"origin": APP}, True),
        ({"origin": "https://evil.example"}, False),
        # Origin wins over a same-origin Referer.
        ({"origin": "https://evil.example", "referer": f"{APP}/consent"}, False),
        ({"referer": f"{APP}/consent?returnTo=%2F"}, True),
        ({"referer": "https://evil.example/consent"}, False),
        ({"referer": "https://app.example.com.evil.example/"}, False),
        ({}, False),
    ],
)
def test_origin_then_referer_decides(headers: dict[str, str], accepted: bool) -> None:
    csrf = CSRF("s" * 40, APP)
    session = make_session()
    assert csrf.check(post(**headers), session, csrf.token(session)) is accepted


def test_token_is_bound_to_the_session() -> None:
    csrf = CSRF("s" * 40, APP)
    session, other = make_session(), make_session()
    assert csrf.check(post(origin=APP), session, csrf.token(other)) is False
    assert csrf.check(post(origin=APP), session, None) is False
