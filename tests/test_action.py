"""Runs the shipped Auth0 Action under Node with a recording ``api`` object."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ACTION = Path(__file__).resolve().parent.parent / "actions" / "consent-claim.js"
CLAIM = "https://consent.example.com/consent"

HARNESS = """
const action = require(process.argv[1]);
const event = JSON.parse(process.argv[2]);
const calls = [];
const api = {
  idToken: { setCustomClaim: (k, v) => calls.push(["claim", k, v]) },
  access: { deny: (reason) => calls.push(["deny", reason]) },
};
action.onExecutePostLogin(event, api)
  .then(() => console.log(JSON.stringify(calls)))
  .catch((e) => console.log(JSON.stringify([["error", e.message]])));
"""


def run(event: dict[str, Any]) -> list[list[Any]]:
    node = shutil.which("node")
    assert node, "Node.js is needed to run the shipped Action"
    out = subprocess.run(  # noqa: S603 - fixed program, arguments built here
        [node, "-e", HARNESS, str(ACTION), json.dumps(event)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    result: list[list[Any]] = json.loads(out.stdout)
    return result


def event(
    user_metadata: dict[str, Any], app_metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "secrets": {"CONSENT_CLAIM": CLAIM},
        "user": {"user_metadata": user_metadata, "app_metadata": app_metadata or {}},
    }


def test_copies_consent_unchanged() -> None:
    consent = {"given": True, "version": "v2", "date": "2026-01-01T00:00:00.000Z", "x": [1]}
    assert run(event({"consent": consent})) == [["claim", CLAIM, consent]]


def test_no_consent_no_claim() -> None:
    assert run(event({})) == []


def test_flagged_user_is_denied() -> None:
    assert run(event({"consent": {"given": False}}, {"deleted": True})) == [
        ["deny", "user is blocked"]
    ]


def test_missing_secret_is_an_error() -> None:
    assert run({"secrets": {}, "user": {}})[0][0] == "error"
