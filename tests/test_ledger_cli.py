"""``consent-middleware ledger ...`` as operators run it: a process of its own, its output
and exit status, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from consent_middleware import _cli
from consent_middleware._events import ConsentAction
from consent_middleware._ledger import Ledger
from consent_middleware._ledger_schema import LEDGER, create_engine, engine_url
from tests.postgres_server import USER, PostgresServer
from tests.test_ledger import KEY, consent_event, raw

pytestmark = pytest.mark.anyio


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")} | env
    return subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "consent_middleware", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def ledger_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run("ledger", *args, CONSENT_LEDGER_URL=url, CONSENT_LEDGER_KEY=KEY)


async def test_verify_head_export_and_stats(ledger_url: str) -> None:
    ledger = await Ledger.open(ledger_url, KEY)
    try:
        given = await ledger.record("auth0|alice", consent_event())
        await ledger.confirm(given)
        withdrawn = await ledger.record("auth0|alice", consent_event(ConsentAction.WITHDRAWN))
        await ledger.abandon(withdrawn, "Auth0 answered 503")
        await ledger.record("auth0|bob", consent_event())
        head = await ledger.head()
    finally:
        await ledger.close()

    done = ledger_cli(ledger_url, "head")
    assert (done.returncode, done.stdout) == (0, f"{head}\n")

    done = ledger_cli(ledger_url, "verify", "--head", str(head))
    assert done.returncode == 0 and done.stdout == f"ok: 5 rows, head {head}\n"

    done = ledger_cli(ledger_url, "export", "--user", "auth0|alice")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0
    assert [(e["entry_id"], e["state"]) for e in lines] == [
        (given, "confirmed"),
        (withdrawn, "abandoned"),
    ]
    assert lines[0]["event"] == consent_event().as_record()
    assert lines[1]["reason"] == "Auth0 answered 503"
    # Nobody under that sub (or another key): said on stderr, not an empty success.
    done = ledger_cli(ledger_url, "export", "--user", "auth0|nobody")
    assert (done.returncode, done.stdout) == (0, "")
    assert "no entries for this user" in done.stderr and "CONSENT_LEDGER_KEY" in done.stderr

    done = ledger_cli(ledger_url, "stats", "--version", "v2")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {
        "version": "v2",
        "given": 1,
        "withdrawn": 0,
        "pending": 1,
        "abandoned": 1,
    }


async def test_verify_exits_1_with_the_first_broken_row(ledger_url: str) -> None:
    ledger = await Ledger.open(ledger_url, KEY)
    try:
        for i in range(4):
            await ledger.record(f"auth0|{i}", consent_event())
        head = await ledger.head()
    finally:
        await ledger.close()
    await raw(ledger_url, sa.update(LEDGER).where(LEDGER.c.seq == 3).values(recorded_at=0))
    done = ledger_cli(ledger_url, "verify")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "broken at seq 3: row_hash does not match the row: the row was edited"
    )
    assert "2 rows intact before it" in done.stdout

    await raw(ledger_url, sa.delete(LEDGER).where(LEDGER.c.seq >= 3))
    assert ledger_cli(ledger_url, "verify").returncode == 0
    done = ledger_cli(ledger_url, "verify", "--head", str(head))
    assert done.returncode == 1 and "broken at seq 3" in done.stdout
    assert "deleted from the end" in done.stdout


def test_a_missing_setting_is_named_and_exits_2() -> None:
    done = run("ledger", "head")
    assert (done.returncode, done.stderr) == (
        2,
        "consent-middleware: CONSENT_LEDGER_URL is not set\n",
    )
    done = run("ledger", "--url", "sqlite:///x.db", "export", "--user", "auth0|1")
    assert (done.returncode, done.stderr) == (
        2,
        "consent-middleware: CONSENT_LEDGER_KEY is not set\n",
    )


def test_an_unusable_setting_exits_2_without_the_password() -> None:
    done = run(
        "ledger", "verify", CONSENT_LEDGER_URL="mysql://u:hunter2@db/x", CONSENT_LEDGER_KEY=KEY
    )
    assert done.returncode == 2 and "CONSENT_LEDGER_URL must look like" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    done = run(
        "ledger",
        "export",
        "--user",
        "u",
        CONSENT_LEDGER_URL="sqlite:///x.db",
        CONSENT_LEDGER_KEY="short",
    )
    assert done.returncode == 2 and "CONSENT_LEDGER_KEY must be at least 32" in done.stderr


def test_verify_head_and_stats_need_no_key(ledger_url: str) -> None:
    # An auditor checks the chain without the pseudonyms' key.
    asyncio.run(_filled(ledger_url))
    for command in (["verify"], ["head"], ["stats", "--version", "v1"]):
        done = run("ledger", *command, CONSENT_LEDGER_URL=ledger_url)
        assert done.returncode == 0, done.stderr


async def _filled(url: str) -> None:
    ledger = await Ledger.open(url, KEY)
    try:
        await ledger.confirm(await ledger.record("auth0|1", consent_event()))
    finally:
        await ledger.close()


def test_a_database_without_a_ledger_is_refused_and_left_as_it_was(ledger_url: str) -> None:
    # A mistyped path or database name: no ledger, not an empty one that "verifies ok".
    for command in (["verify"], ["head"], ["stats", "--version", "v1"]):
        done = run("ledger", *command, CONSENT_LEDGER_URL=ledger_url)
        assert done.returncode == 2 and "no consent ledger" in done.stderr, done.stderr
    assert asyncio.run(_tables(ledger_url)) == []


def test_a_role_that_may_only_read_can_verify(postgres: PostgresServer) -> None:
    url = postgres.create_database("ledger_read_only")
    asyncio.run(_filled(url))
    asyncio.run(
        _as_owner(
            url,
            "CREATE ROLE auditor LOGIN",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO auditor",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        )
    )
    auditor = url.replace(f"//{USER}@", "//auditor@")
    done = run("ledger", "verify", CONSENT_LEDGER_URL=auditor)
    assert (done.returncode, done.stdout.split(",")[0]) == (0, "ok: 2 rows"), done.stderr
    # A role that may not read it gets the server's reason, not only an exception's name.
    asyncio.run(_as_owner(url, "REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM auditor"))
    done = run("ledger", "verify", CONSENT_LEDGER_URL=auditor)
    assert done.returncode == 2 and "permission denied" in done.stderr, done.stderr


async def _as_owner(url: str, *statements: str) -> None:
    engine = create_engine(engine_url(url))
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


async def _tables(url: str) -> list[str]:
    """The tables in ``url``'s database (none for a SQLite file that does not exist)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []
    engine = create_engine(engine_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    finally:
        await engine.dispose()


def test_a_malformed_head_is_a_usage_error() -> None:
    done = run("ledger", "verify", "--head", "12:nothex")
    assert done.returncode == 2 and "SEQ:HASH" in done.stderr


def test_help_lists_the_commands_and_the_variables() -> None:
    done = run("--help")
    assert done.returncode == 0
    for word in ("ledger", "verify", "head", "export", "stats"):
        assert word in done.stdout
    assert "CONSENT_LEDGER_URL" in done.stdout and "CONSENT_LEDGER_KEY" in done.stdout
    done = run("ledger", "--help")
    assert done.returncode == 0 and "{verify,head,export,stats}" in done.stdout


def test_without_the_ledger_extra_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As if SQLAlchemy and the drivers were not installed: the import of the ledger fails.
    monkeypatch.setitem(sys.modules, "consent_middleware._ledger", None)
    monkeypatch.setenv("CONSENT_LEDGER_URL", "sqlite:///x.db")
    monkeypatch.setenv("CONSENT_LEDGER_KEY", KEY)
    assert _cli.main(["ledger", "head"]) == 2
    assert "pip install 'consent-middleware[ledger]'" in capsys.readouterr().err
