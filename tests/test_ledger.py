"""The consent ledger on SQLite and on a real PostgreSQL server: the chain, its locking under
concurrent appends, tampering found by verify, states, pseudonyms, settings, migrations."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from consent_middleware import _ledger
from consent_middleware._events import (
    CollectionMethod,
    ConsentAction,
    ConsentEvent,
    PurposeChoice,
)
from consent_middleware._exceptions import ConfigurationError, LedgerError
from consent_middleware._ledger import EntryState, Ledger
from consent_middleware._ledger_chain import (
    EMPTY,
    GENESIS,
    HASHED,
    LedgerHead,
    canonical,
    chain_hash,
)
from consent_middleware._ledger_schema import (
    LATEST,
    LEDGER,
    MIGRATIONS,
    SCHEMA,
    create_engine,
    engine_url,
)
from tests.live_server import free_port
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio

KEY = "k" * 32


def consent_event(
    action: ConsentAction = ConsentAction.GIVEN, version: str = "v2", terms: bool = True
) -> ConsentEvent:
    return ConsentEvent(
        action=action,
        version=version,
        date=1_700_000_000_000,
        text_sha256="a" * 64,
        text_details="https://app.example.com/terms",
        method=CollectionMethod.TERMS_PAGE,
        terms=terms,
        purposes={"analytics": PurposeChoice(True, version, 1_700_000_000_000)},
    )


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(ledger_url, KEY)
    try:
        yield opened
    finally:
        await opened.close()


async def fill(ledger: Ledger, count: int) -> list[str]:
    """``count`` events, every other one confirmed; returns their entry ids."""
    ids = []
    for i in range(count):
        entry_id = await ledger.record(f"auth0|{i % 3}", consent_event())
        if i % 2 == 0:
            await ledger.confirm(entry_id)
        ids.append(entry_id)
    return ids


async def raw(url: str, *statements: Any) -> list[sa.Row[Any]]:
    """Run statements as someone with direct access to the database would, past the
    append-only triggers; returns the last statement's rows, if any."""
    engine: AsyncEngine = create_engine(engine_url(url))
    try:
        async with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                await conn.exec_driver_sql("DROP TRIGGER IF EXISTS consent_ledger_no_update")
                await conn.exec_driver_sql("DROP TRIGGER IF EXISTS consent_ledger_no_delete")
            else:
                await conn.exec_driver_sql("ALTER TABLE consent_ledger DISABLE TRIGGER USER")
            result = None
            for statement in statements:
                result = await conn.execute(statement)
            return list(result.all()) if result is not None and result.returns_rows else []
    finally:
        await engine.dispose()


def row_update(seq: int, **values: Any) -> sa.Update:
    return sa.update(LEDGER).where(LEDGER.c.seq == seq).values(**values)


# ---- the chain ----------------------------------------------------------------------------


async def test_the_chain_verifies_after_many_appends(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await ledger.head() == LedgerHead(0, GENESIS)
    assert (await ledger.verify()).ok
    await fill(ledger, 40)
    early = await ledger.head()
    await fill(ledger, 20)
    head = await ledger.head()
    assert head.seq == 90 and str(head) == f"90:{head.row_hash}"
    # Small batches: the scan pages through the table instead of loading it.
    monkeypatch.setattr(_ledger, "BATCH", 7)
    result = await ledger.verify()
    assert result.ok and result.rows == 90 and result.head == head
    assert result.broken_seq is None and result.reason is None
    # A head printed earlier, or the current one, is on the chain.
    assert (await ledger.verify(str(early))).ok
    assert (await ledger.verify(head)).ok


async def test_the_first_row_links_to_64_zeros_and_hashes_its_columns(
    ledger: Ledger, ledger_url: str
) -> None:
    await fill(ledger, 2)
    rows = await raw(ledger_url, sa.select(LEDGER).order_by(LEDGER.c.seq))
    assert [row.kind for row in rows] == ["event", "confirmed", "event"]
    assert rows[0].prev_hash == GENESIS and rows[1].prev_hash == rows[0].row_hash
    assert rows[1].ref == rows[0].entry_id and rows[1].event is None
    assert (
        rows[0].row_hash
        == hashlib.sha256(
            (GENESIS + canonical({name: rows[0]._mapping[name] for name in HASHED})).encode()
        ).hexdigest()
    )
    # The event is the canonical JSON of the record Auth0 gets too.
    record = consent_event().as_record()
    assert rows[0].event == json.dumps(record, sort_keys=True, separators=(",", ":"))


async def test_concurrent_appends_from_many_connections_keep_one_chain(ledger_url: str) -> None:
    # Five engines stand for five processes or replicas, each with its own connections.
    ledgers = [await Ledger.open(ledger_url, KEY) for _ in range(5)]
    try:

        async def append(i: int) -> None:
            ledger = ledgers[i % len(ledgers)]
            entry_id = await ledger.record(f"auth0|{i}", consent_event())
            await ledger.confirm(entry_id)

        await asyncio.gather(*(append(i) for i in range(50)))
        result = await ledgers[0].verify()
        assert result.ok and result.rows == 100 and result.head.seq == 100
        seqs = await raw(ledger_url, sa.select(LEDGER.c.seq).order_by(LEDGER.c.seq))
        assert [row.seq for row in seqs] == list(range(1, 101))
        histories = [await ledgers[1].history(f"auth0|{i}") for i in range(50)]
        assert all(
            [entry.state for entry in history] == [EntryState.CONFIRMED] for history in histories
        )
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_the_database_refuses_update_and_delete(ledger: Ledger, ledger_url: str) -> None:
    await fill(ledger, 1)
    engine = create_engine(engine_url(ledger_url))
    try:
        for statement in (row_update(1, reason="x"), sa.delete(LEDGER)):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                async with engine.begin() as conn:
                    await conn.execute(statement)
    finally:
        await engine.dispose()
    assert (await ledger.verify()).ok


# ---- tampering ----------------------------------------------------------------------------


async def swap_rows(url: str, a: int, b: int) -> None:
    rows = {
        row.seq: {k: v for k, v in row._mapping.items() if k != "seq"}
        for row in await raw(url, sa.select(LEDGER).where(LEDGER.c.seq.in_([a, b])))
    }
    # Through a free entry_id first: both columns are UNIQUE.
    await raw(
        url,
        row_update(a, entry_id="swap", ref=None),
        row_update(b, **rows[a]),
        row_update(a, **rows[b]),
    )


TAMPERING: dict[str, tuple[Callable[[str], Awaitable[object]], int, str]] = {
    "event edited": (
        lambda url: raw(url, row_update(5, event=canonical({"action": "withdrawn"}))),
        5,
        "edited",
    ),
    "user_key edited": (lambda url: raw(url, row_update(3, user_key="0" * 64)), 3, "edited"),
    "recorded_at edited": (lambda url: raw(url, row_update(7, recorded_at=1)), 7, "edited"),
    "rows swapped": (lambda url: swap_rows(url, 4, 6), 4, "reordered"),
    "middle row deleted": (
        lambda url: raw(url, sa.delete(LEDGER).where(LEDGER.c.seq == 6)),
        7,
        "seq 6 is missing",
    ),
}


@pytest.mark.parametrize("case", TAMPERING)
async def test_verify_finds_tampering(ledger: Ledger, ledger_url: str, case: str) -> None:
    tamper, seq, reason = TAMPERING[case]
    await fill(ledger, 8)
    await tamper(ledger_url)
    result = await ledger.verify()
    assert not result.ok and result.broken_seq == seq and reason in (result.reason or "")
    # The rows before the break are vouched for (all but the deleted one).
    assert result.rows == result.head.seq == (5 if case == "middle row deleted" else seq - 1)


async def test_a_deleted_tail_is_found_only_against_a_kept_head(
    ledger: Ledger, ledger_url: str
) -> None:
    await fill(ledger, 8)
    kept = str(await ledger.head())
    await raw(ledger_url, sa.delete(LEDGER).where(LEDGER.c.seq > 10))
    # The remaining chain is intact: only the head kept elsewhere shows what is missing.
    assert (await ledger.verify()).ok
    result = await ledger.verify(kept)
    assert not result.ok and result.broken_seq == 11 and result.rows == 10
    assert "deleted from the end" in (result.reason or "")


async def recomputed(url: str, edits: dict[int, dict[str, object]]) -> None:
    """Apply ``edits`` (seq -> columns) and recompute every hash from the first edited row
    on, as someone with write access to the database would to hide them."""
    rows = await raw(url, sa.select(LEDGER).order_by(LEDGER.c.seq))
    first = min(edits)
    prev = rows[first - 2].row_hash if first > 1 else GENESIS
    updates = []
    for row in rows[first - 1 :]:
        columns = {name: row._mapping[name] for name in HASHED} | edits.get(row.seq, {})
        row_hash = chain_hash(prev, columns)
        changed = {k: v for k, v in columns.items() if k != "seq"}
        updates.append(row_update(row.seq, **changed, prev_hash=prev, row_hash=row_hash))
        prev = row_hash
    await raw(url, *updates)


async def test_a_recomputed_chain_is_found_only_against_a_kept_head(
    ledger: Ledger, ledger_url: str
) -> None:
    await fill(ledger, 8)
    kept = await ledger.head()
    # Row 4 (an event) and row 5 (its confirmation) moved to another user, consistently.
    await recomputed(ledger_url, {4: {"user_key": "f" * 64}, 5: {"user_key": "f" * 64}})
    assert (await ledger.verify()).ok
    result = await ledger.verify(kept)
    assert not result.ok and result.broken_seq == kept.seq
    assert "differs from the expected head" in (result.reason or "")
    # The edit could be in any row up to the head: none is reported intact.
    assert (result.rows, result.head) == (0, EMPTY)


# Rows the ledger's own writes never make, the chain recomputed over them: found without
# a kept head. fill(4) writes: 1 event (confirmed by 2), 3 event, 4 event (confirmed by 5),
# 6 event; ``ids`` are the events' entry ids. (The schema itself refuses an unknown kind,
# and a second decision of one event.)
MISSHAPEN: dict[str, tuple[Callable[[list[str]], dict[int, dict[str, object]]], int, str]] = {
    "a confirmation moved to another user": (
        lambda ids: {2: {"user_key": "f" * 64}}, 2, "naming another user's event"),
    "an event moved to another user": (
        lambda ids: {1: {"user_key": "f" * 64}}, 2, "naming another user's event"),
    "a confirmation naming nothing": (
        lambda ids: {2: {"ref": "no-such-event"}}, 2, "no earlier undecided"),
    "an event emptied": (lambda ids: {3: {"event": None}}, 3, "without a valid event"),
    "an event made null": (lambda ids: {3: {"event": "null"}}, 3, "without a valid event"),
    "an event made {}": (lambda ids: {3: {"event": "{}"}}, 3, "without a valid event"),
    "an event made text": (lambda ids: {3: {"event": "no json"}}, 3, "without a valid event"),
    "an event naming a row": (lambda ids: {3: {"ref": "x"}}, 3, "naming another row"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISSHAPEN)
async def test_verify_finds_rows_the_ledger_never_writes(
    ledger: Ledger, ledger_url: str, case: str
) -> None:
    edits, seq, reason = MISSHAPEN[case]
    ids = await fill(ledger, 4)
    assert (await ledger.verify()).ok
    await recomputed(ledger_url, edits(ids))
    result = await ledger.verify()
    assert not result.ok and result.broken_seq == seq, result
    assert reason in (result.reason or "") and "never writes such a row" in (result.reason or "")
    assert result.rows == seq - 1


# ---- states, history, stats ---------------------------------------------------------------


async def test_history_gives_each_event_its_state(ledger: Ledger) -> None:
    confirmed = await ledger.record("auth0|alice", consent_event())
    await ledger.record("auth0|bob", consent_event())
    abandoned = await ledger.record("auth0|alice", consent_event(ConsentAction.WITHDRAWN))
    pending = await ledger.record("auth0|alice", consent_event(ConsentAction.WITHDRAWN))
    await ledger.confirm(confirmed)
    await ledger.abandon(abandoned, "Auth0 answered 503")
    history = await ledger.history("auth0|alice")
    assert [e.entry_id for e in history] == [confirmed, abandoned, pending]
    assert [e.state for e in history] == [
        EntryState.CONFIRMED,
        EntryState.ABANDONED,
        EntryState.PENDING,
    ]
    assert history[0].event == consent_event() and history[0].decided_at is not None
    assert history[1].reason == "Auth0 answered 503"
    assert history[2].decided_at is None and history[2].event.action is ConsentAction.WITHDRAWN
    record = history[1].as_record()
    assert record["state"] == "abandoned" and record["event"] == history[1].event.as_record()
    assert len(await ledger.history("auth0|bob")) == 1
    assert await ledger.history("auth0|nobody") == []


async def test_an_event_is_decided_once(ledger: Ledger) -> None:
    entry_id = await ledger.record("auth0|alice", consent_event())
    await ledger.confirm(entry_id)
    with pytest.raises(LedgerError, match="already confirmed"):
        await ledger.abandon(entry_id, "late")
    with pytest.raises(LedgerError, match="already confirmed"):
        await ledger.confirm(entry_id)
    with pytest.raises(LedgerError, match="no pending consent event"):
        await ledger.confirm("00000000-0000-4000-8000-000000000000")
    head = await ledger.head()
    assert head.seq == 2 and (await ledger.verify()).ok


async def test_stats_count_confirmed_terms_events_of_a_version(ledger: Ledger) -> None:
    async def append(event: ConsentEvent, decide: str | None) -> None:
        entry_id = await ledger.record("auth0|u", event)
        if decide == "confirm":
            await ledger.confirm(entry_id)
        elif decide == "abandon":
            await ledger.abandon(entry_id, "failed")

    await append(consent_event(), "confirm")
    await append(consent_event(), "confirm")
    await append(consent_event(ConsentAction.WITHDRAWN), "confirm")
    await append(consent_event(), "abandon")
    await append(consent_event(), None)
    await append(consent_event(version="v1"), "confirm")
    await append(consent_event(terms=False), "confirm")  # a purpose on its own
    assert await ledger.stats("v2") == {"given": 2, "withdrawn": 1, "pending": 1, "abandoned": 1}
    assert await ledger.stats("v1") == {"given": 1, "withdrawn": 0, "pending": 0, "abandoned": 0}
    assert await ledger.stats("v9") == {"given": 0, "withdrawn": 0, "pending": 0, "abandoned": 0}


async def test_a_row_without_a_valid_event_is_reported_and_the_others_still_answer(
    ledger: Ledger, ledger_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One row edited by hand must not cost an officer the rest of a user's proof.
    await fill(ledger, 7)  # auth0|0 has rows 1, 7 (events) and their decisions
    seqs = [row.seq for row in await raw(ledger_url, sa.select(LEDGER.c.seq))]
    first = min(seqs)
    await raw(ledger_url, row_update(first, event="{not json"))
    history = await ledger.history("auth0|0")
    assert len(history) == 2 and all(entry.seq != first for entry in history)
    assert f"row {first} holds no valid consent event: run ledger verify" in caplog.text
    await raw(ledger_url, row_update(first, event='{"action": "maybe"}'))
    assert await ledger.stats("v2") == {
        "given": 3, "withdrawn": 0, "pending": 3, "abandoned": 0, "malformed": 1,
    }  # fmt: skip


async def test_history_skips_a_decision_of_an_event_it_does_not_hold(
    ledger: Ledger, ledger_url: str
) -> None:
    entry_id = await ledger.record("auth0|alice", consent_event())
    await ledger.confirm(entry_id)
    # A confirmation pointing elsewhere (only by hand: verify reports the edit).
    await raw(ledger_url, row_update(2, ref="00000000-0000-4000-8000-000000000000"))
    (entry,) = await ledger.history("auth0|alice")
    assert entry.state is EntryState.PENDING
    assert (await ledger.verify()).broken_seq == 2


# ---- pseudonyms and settings --------------------------------------------------------------


async def test_rows_hold_an_hmac_of_the_sub_never_the_sub(ledger: Ledger, ledger_url: str) -> None:
    sub = "auth0|alice@example.com"
    await ledger.record(sub, consent_event())
    expected = hmac.new(KEY.encode(), sub.encode(), hashlib.sha256).hexdigest()
    assert ledger.user_key(sub) == expected
    (row,) = await raw(ledger_url, sa.select(LEDGER))
    assert row.user_key == expected
    assert all("alice" not in str(value) for value in row)
    other = await Ledger.open(ledger_url, b"o" * 32)
    try:
        assert other.user_key(sub) != expected
        assert await other.history(sub) == []
    finally:
        await other.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "mysql://u:hunter2@db/x",
        "redis://127.0.0.1/0",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://u:hunter2@/x",
        "postgresql://u:hunter2@db.example.com",
        "postgresql+psycopg://u:hunter2@db/x",
    ],
)
async def test_a_url_it_cannot_use_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSENT_LEDGER_URL") as raised:
        await Ledger.open(url, KEY)
    assert "hunter2" not in str(raised.value)


def test_urls_are_mapped_to_the_async_drivers() -> None:
    assert str(engine_url("sqlite:///relative.db")) == "sqlite+aiosqlite:///relative.db"
    assert str(engine_url("sqlite:////abs/path.db")) == "sqlite+aiosqlite:////abs/path.db"
    mapped = engine_url("postgresql://user:pw@db.example.com:6543/consent")
    assert mapped.drivername == "postgresql+asyncpg"
    assert (mapped.host, mapped.port, mapped.database) == ("db.example.com", 6543, "consent")
    assert (mapped.username, mapped.password) == ("user", "pw")


@pytest.mark.parametrize("key", ["short", b"k" * 31, ""])
async def test_a_short_key_is_a_configuration_error(key: str | bytes, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CONSENT_LEDGER_KEY"):
        await Ledger.open(f"sqlite:///{tmp_path}/l.db", key)


async def test_str_and_bytes_keys_agree(tmp_path: Path) -> None:
    a = await Ledger.open(f"sqlite:///{tmp_path}/l.db", KEY)
    b = await Ledger.open(f"sqlite:///{tmp_path}/l.db", KEY.encode())
    try:
        assert a.user_key("s") == b.user_key("s")
    finally:
        await a.close()
        await b.close()


async def test_a_relative_sqlite_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ledger = await Ledger.open("sqlite:///relative.db", KEY)
    try:
        await ledger.record("s", consent_event())
    finally:
        await ledger.close()
    assert (tmp_path / "relative.db").exists()


async def test_the_password_is_never_logged(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres.create_database("ledger_password")
    with_password = url.replace("ledger@", "ledger:hunter2@")  # trust auth: any password
    caplog.set_level(logging.INFO, logger="consent_middleware")
    ledger = await Ledger.open(with_password, KEY)
    await ledger.close()
    assert "consent ledger at" in caplog.text and "***" in caplog.text
    assert "hunter2" not in caplog.text


# ---- migrations and failures --------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


async def test_reopening_keeps_the_rows_and_migrates_nothing(ledger_url: str) -> None:
    first = await Ledger.open(ledger_url, KEY)
    await fill(first, 3)
    head = await first.head()
    await first.close()
    again = await Ledger.open(ledger_url, KEY)
    try:
        assert await again.head() == head and (await again.verify()).ok
        (row,) = await raw(ledger_url, sa.select(SCHEMA.c.version))
        assert row.version == LATEST
    finally:
        await again.close()


async def test_a_schema_newer_than_the_code_is_refused(ledger: Ledger, ledger_url: str) -> None:
    await raw(ledger_url, sa.update(SCHEMA).values(version=LATEST + 1))
    with pytest.raises(LedgerError, match=f"version {LATEST + 1}, newer than this code"):
        await Ledger.open(ledger_url, KEY)


async def test_an_unreachable_database_is_a_ledger_error() -> None:
    url = f"postgresql://ledger:hunter2@127.0.0.1:{free_port()}/ledger"
    with pytest.raises(LedgerError, match="could not be opened") as raised:
        await Ledger.open(url, KEY)
    assert "hunter2" not in str(raised.value)


async def test_a_failing_database_is_a_ledger_error(ledger: Ledger, ledger_url: str) -> None:
    entry_id = await ledger.record("s", consent_event())
    await raw(ledger_url, sa.text("DROP TABLE consent_ledger"))
    with pytest.raises(LedgerError, match="could not be written"):
        await ledger.record("s", consent_event())
    with pytest.raises(LedgerError, match="could not be written"):
        await ledger.confirm(entry_id)
    with pytest.raises(LedgerError, match="could not be read"):
        await ledger.head()
    with pytest.raises(LedgerError, match="could not be read"):
        await ledger.verify()


def test_a_head_is_parsed_strictly() -> None:
    head = LedgerHead.parse(f" 12:{'AB' * 32}\n")
    assert head == LedgerHead(12, "ab" * 32)
    for text in ("", "12", f"x:{'a' * 64}", "12:abc", f"12:{'g' * 64}", f"-1:{'a' * 64}"):
        with pytest.raises(ValueError, match="SEQ:HASH"):
            LedgerHead.parse(text)
