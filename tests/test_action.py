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


STATE = {
    "given": True,
    "version": "v2",
    "date": "2026-01-01T00:00:00.000Z",
    "text_sha256": "ab" * 32,
    "text_details": "https://app.example.com/terms",
    "purposes": {"marketing": {"given": True, "version": "1", "date": 1767225600000}},
    "withdrawn": False,
}


def history(events: int) -> list[dict[str, Any]]:
    return [
        {"action": "given", "version": "v2", "date": 1767225600000 + i, "method": "terms_page"}
        for i in range(events)
    ]


def test_copies_the_current_state_of_app_metadata_never_the_history() -> None:
    stored = {**STATE, "history": history(3)}
    assert run(event({}, {"consent": stored})) == [["claim", CLAIM, STATE]]


def test_the_claim_stays_the_same_size_as_the_history_grows() -> None:
    sizes = {
        len(json.dumps(run(event({}, {"consent": {**STATE, "history": history(n)}}))))
        for n in (0, 1, 50, 500)
    }
    assert len(sizes) == 1


def test_a_consent_the_user_wrote_into_user_metadata_is_ignored() -> None:
    # Auth0 lets a user token with update:current_user_metadata write this.
    forged = {"given": True, "version": "v2", "date": "2020-01-01T00:00:00.000Z"}
    assert run(event({"consent": forged})) == []


def test_no_consent_no_claim() -> None:
    assert run(event({})) == []


def test_flagged_user_is_denied() -> None:
    assert run(event({"consent": {"given": False}}, {"deleted": True})) == [
        ["deny", "user is blocked"]
    ]


def test_missing_secret_is_an_error() -> None:
    assert run({"secrets": {}, "user": {}})[0][0] == "error"
