"""The ledger's database: URL, engine, table, versioned migrations and the append lock.

Migrations are plain SQL, numbered, applied in order in one transaction when a ledger is
opened; ``ledger_schema`` holds the version reached. A database whose version is newer than
the code knows is refused rather than written with an older idea of the rows. Each
migration is written out in full and never edited once released: the table below describes
the current columns for queries, the migrations are the history of how they came to be.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ._exceptions import ConfigurationError, LedgerError

URL_VARIABLE = "CONSENT_LEDGER_URL"
URL_FORMS = (
    "sqlite:///relative.db, sqlite:////absolute/path.db or postgresql://user:pw@host:port/db"
)
# The driver each accepted scheme is served by: both asyncio-native, so an append never
# blocks the event loop the gate runs on.
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# One key for the transaction-scoped advisory lock every PostgreSQL append takes: the first
# eight bytes of SHA-256("consent_ledger"), so it cannot collide with an app's small integers.
ADVISORY_LOCK = int.from_bytes(hashlib.sha256(b"consent_ledger").digest()[:8], "big", signed=True)
# How long a SQLite writer waits for another's BEGIN IMMEDIATE before giving up (seconds).
SQLITE_BUSY_TIMEOUT = 30.0

METADATA = sa.MetaData()
LEDGER = sa.Table(
    "consent_ledger",
    METADATA,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Column("entry_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ref", sa.String(36)),
    sa.Column("user_key", sa.String(64), nullable=False),
    sa.Column("event", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
)
SCHEMA = sa.Table(
    "ledger_schema",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)


def engine_url(url: str) -> URL:
    """The async driver's URL for one written as users write them; ConfigurationError for
    anything else. Messages never repeat the URL: it may hold a password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is None or parsed.drivername not in DRIVERS:
        raise ConfigurationError(f"{URL_VARIABLE} must look like {URL_FORMS}")
    if parsed.drivername == "sqlite" and (parsed.database or ":memory:") == ":memory:":
        # Each pooled connection would get a database of its own, gone when it closes.
        raise ConfigurationError(f"{URL_VARIABLE} must name a SQLite file, not memory")
    if parsed.drivername == "postgresql" and not (parsed.host and parsed.database):
        raise ConfigurationError(f"{URL_VARIABLE} must name the PostgreSQL host and database")
    return parsed.set(drivername=DRIVERS[parsed.drivername])


def driver_reason(exc: BaseException, url: URL) -> str:
    """The driver's own first line of why (": password authentication failed for user
    ..."), which names the cause where the exception's class does not; never the URL's
    password, should a driver repeat it."""
    reason = str(getattr(exc, "orig", None) or "").strip().splitlines()
    if not reason:
        return ""
    line = reason[0][:200]
    if url.password:
        line = line.replace(str(url.password), "***")
    return f": {line}"


def create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() != "sqlite":
        # READ COMMITTED (PostgreSQL's default, pinned here): each statement after the
        # advisory lock sees every append committed before the lock was granted. Under
        # REPEATABLE READ the snapshot would predate the lock and the head would be stale.
        return create_async_engine(url, isolation_level="READ COMMITTED", pool_pre_ping=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions out of the sqlite3 module's hands (it would BEGIN lazily, and
        # only before writes) so that each one starts with the BEGIN chosen below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (verify, history) never block the appender, nor it them; FULL
        # syncs each commit, so an acknowledged consent survives a power cut.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # BEGIN IMMEDIATE takes the database's write lock at once, so two appenders (in
        # any process) cannot both read the same head; reads keep the lock-free BEGIN.
        write = connection.get_execution_options().get("ledger_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@asynccontextmanager
async def locked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that holds the ledger's append lock until it commits or rolls back:
    BEGIN IMMEDIATE on SQLite, a transaction-scoped advisory lock on PostgreSQL. Either
    way the lock spans every process and replica writing to the same database."""
    async with engine.connect() as conn:
        await conn.execution_options(ledger_write=True)
        async with conn.begin():
            if engine.dialect.name == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK)))
            yield conn


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    # The statements for a dialect ("sqlite" or "postgresql").
    statements: Callable[[str], list[str]]


def _create_ledger(dialect: str) -> list[str]:
    # On SQLite only INTEGER PRIMARY KEY is the rowid itself: the fastest ordered scan.
    seq = "INTEGER" if dialect == "sqlite" else "BIGINT"
    return [
        f"""CREATE TABLE consent_ledger (
            seq {seq} NOT NULL PRIMARY KEY,
            recorded_at BIGINT NOT NULL,
            entry_id VARCHAR(36) NOT NULL UNIQUE,
            kind VARCHAR(16) NOT NULL CHECK (kind IN ('event', 'confirmed', 'abandoned')),
            ref VARCHAR(36) UNIQUE,
            user_key VARCHAR(64) NOT NULL,
            event TEXT,
            reason TEXT,
            prev_hash VARCHAR(64) NOT NULL,
            row_hash VARCHAR(64) NOT NULL
        )""",
        # ref is UNIQUE above: an event is confirmed or abandoned once, never both.
        "CREATE INDEX consent_ledger_user_key ON consent_ledger (user_key, seq)",
    ]


def _append_only(dialect: str) -> list[str]:
    # The code never updates or deletes; the database refuses it too, so a mistaken
    # statement fails loudly instead of breaking the chain. (Whoever can drop a trigger
    # can still tamper: that is what verify and the head kept elsewhere are for.)
    if dialect == "sqlite":
        return [
            f"""CREATE TRIGGER consent_ledger_no_{verb.lower()} BEFORE {verb} ON consent_ledger
            BEGIN SELECT RAISE(ABORT, 'consent_ledger is append-only'); END"""
            for verb in ("UPDATE", "DELETE")
        ]
    return [
        """CREATE FUNCTION consent_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'consent_ledger is append-only'; END $$""",
        """CREATE TRIGGER consent_ledger_no_change BEFORE UPDATE OR DELETE ON consent_ledger
        FOR EACH ROW EXECUTE FUNCTION consent_ledger_append_only()""",
        # TRUNCATE skips row triggers.
        """CREATE TRIGGER consent_ledger_no_truncate BEFORE TRUNCATE ON consent_ledger
        FOR EACH STATEMENT EXECUTE FUNCTION consent_ledger_append_only()""",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the consent_ledger table", _create_ledger),
    Migration(2, "refuse UPDATE, DELETE and TRUNCATE on consent_ledger", _append_only),
)
LATEST = MIGRATIONS[-1].version


async def schema_version(engine: AsyncEngine) -> int:
    """The schema version of a ledger read as it is (the operator's commands): nothing is
    created or changed, so a mistyped URL cannot turn another database into an empty
    ledger that verifies, and a role that may only read can check one. LedgerError for a
    database without a ledger, or with another schema version than this code's."""
    async with engine.connect() as conn:
        exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(SCHEMA.name))
        row = (
            (await conn.execute(sa.select(SCHEMA.c.version))).scalar_one_or_none() if exists else 0
        )
    found = row or 0
    if not found:
        raise LedgerError("there is no consent ledger in that database")
    if found != LATEST:
        raise LedgerError(
            f"the ledger's schema is version {found}, this code reads version {LATEST}: "
            + ("upgrade consent-middleware" if found > LATEST else "let the app open it once")
        )
    return found


async def migrate(engine: AsyncEngine) -> int:
    """Bring the schema to LATEST in one transaction under the append lock (two replicas
    starting together migrate once); returns the version found before. Raises LedgerError
    for a schema newer than this code."""
    async with locked(engine) as conn:
        await conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS ledger_schema ("
            "id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        found = (await conn.execute(sa.select(SCHEMA.c.version))).scalar_one_or_none()
        if found is None:
            await conn.execute(sa.insert(SCHEMA).values(id=1, version=0))
            found = 0
        if found > LATEST:
            raise LedgerError(
                f"the ledger's schema is version {found}, newer than this code's {LATEST}: "
                "upgrade consent-middleware before opening it"
            )
        for migration in MIGRATIONS[found:]:
            for statement in migration.statements(engine.dialect.name):
                await conn.exec_driver_sql(statement)
        if found < LATEST:
            await conn.execute(sa.update(SCHEMA).values(version=LATEST))
        return found
