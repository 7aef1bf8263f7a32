"""Dependency floors that are security fixes: declared in pyproject.toml and in effect."""

from __future__ import annotations

import json
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

from jose import jwe
from packaging.requirements import Requirement

from consent_middleware._jose import decrypt, derive_key

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def declared(name: str) -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (requirement,) = [r for r in map(Requirement, dependencies) if r.name == name]
    return requirement


def test_python_jose_floor_excludes_the_2024_cves() -> None:
    # CVE-2024-33663 (algorithm confusion with OpenSSH ECDSA keys) and CVE-2024-33664
    # (a compressed JWE that inflates without bound) are fixed in 3.4.0.
    specifier = declared("python-jose").specifier
    assert not specifier.contains("3.3.0") and specifier.contains("3.4.0")
    assert specifier.contains(version("python-jose"))


def test_a_compressed_cookie_that_inflates_past_the_limit_is_refused() -> None:
    # Session and transaction cookies are JWEs the browser sends back: with python-jose
    # before 3.4 one carrying "zip": "DEF" is inflated whole, however large, before any
    # of our checks. 3.4 stops at 250 KB, so it decrypts to nothing.
    key = derive_key("k" * 32)
    claims = {"pad": "a" * (4 * 1024 * 1024), "exp": int(time.time()) + 60}
    plaintext = json.dumps(claims).encode()
    token = jwe.encrypt(plaintext, key, encryption="A256GCM", algorithm="dir", zip="DEF")
    assert len(token) < 20_000  # small enough to send as a chunked cookie
    assert decrypt(token.decode(), [key]) is None
    small = jwe.encrypt(b'{"exp": 9999999999}', key, encryption="A256GCM", algorithm="dir")
    assert decrypt(small.decode(), [key]) is not None
