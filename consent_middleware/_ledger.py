"""The consent ledger: an append-only, hash-chained record of consent events the app owns.

GDPR Art. 7(1) asks the controller to be able to demonstrate that the user consented.
Auth0 holds the user's current state and history (``app_metadata.consent``); the ledger is
the app's own proof, in its own database (SQLite or PostgreSQL), that Auth0's tenant admins
cannot rewrite and that outlives a deleted Auth0 user.

Rows are only ever inserted. A consent event is written ``pending`` (kind ``event``) and
decided by a later row that names it in ``ref``: ``confirmed`` or ``abandoned``. The write
order the accept and withdraw flows follow:

1. ``entry_id = await ledger.record(sub, event)``: pending. If the ledger is down this
   raises ``LedgerError`` and the accept fails with a page before Auth0 is touched, so a
   choice is never taken without being recorded.
2. PATCH the user in Auth0.
3. ``await ledger.confirm(entry_id)``; if the PATCH failed, ``await ledger.abandon(entry_id,
   reason)`` instead.

So the ledger never claims a consent Auth0 does not have: a pending row without a
confirmation is not a consent (a crash between 2 and 3 leaves one, which the operator can
reconcile against Auth0's history).

Each row's ``row_hash`` is SHA-256 over the previous row's hash and the canonical JSON of
the row's other columns, one chain through the whole table from 64 zeros. ``verify`` walks
it (``_ledger_chain``) and finds an edited, reordered or deleted row, and a row of a shape
these writes never make; rows deleted from the end, or a chain recomputed from an edit
that keeps that shape, leave a valid chain behind, which only a head recorded
elsewhere exposes: operators keep ``consent-middleware ledger head`` outside the database
(a ticket, a log shipped off the host) and pass it to ``verify``.

Rows hold no direct identifier: ``user_key`` is HMAC-SHA256 of the OIDC ``sub`` keyed with
``CONSENT_LEDGER_KEY`` (a key of its own, so rotating ``AUTH0_SECRET`` keeps the
pseudonyms), and events hold the terms version and text hash, never an email. Under
``CONSENT_WITHDRAW_MODE=delete`` the rows are therefore kept: without the key they name no
one (GDPR Art. 4(5)), and they remain the proof of what was consented to and withdrawn.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._events import ConsentEvent
from ._exceptions import ConfigurationError, LedgerError
from ._ledger_chain import (
    EMPTY,
    HASHED,
    ChainWalk,
    EntryKind,
    LedgerHead,
    Verification,
    canonical,
    chain_hash,
)
from ._ledger_schema import (
    LEDGER,
    create_engine,
    driver_reason,
    engine_url,
    locked,
    migrate,
    schema_version,
)

logger = logging.getLogger("consent_middleware")

KEY_VARIABLE = "CONSENT_LEDGER_KEY"
MIN_KEY_LENGTH = 32
# Rows per query while scanning (verify, stats): memory stays flat however long the ledger.
BATCH = 5000
# Database and network failures, as SQLAlchemy and the drivers raise them.
DB_ERRORS = (SQLAlchemyError, OSError)


class EntryState(enum.StrEnum):
    """What became of an event: decided by the later row that references it, if any."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class LedgerEntry:
    """One of a user's events with its state."""

    seq: int
    entry_id: str
    recorded_at: int
    event: ConsentEvent
    state: EntryState = EntryState.PENDING
    decided_at: int | None = None
    reason: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "entry_id": self.entry_id,
            "recorded_at": self.recorded_at,
            "state": self.state.value,
            "decided_at": self.decided_at,
            "reason": self.reason,
            "event": self.event.as_record(),
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _event(seq: int, text: str | None) -> ConsentEvent | None:
    """The event a row holds; None, with a warning, if it holds none (a row edited by
    hand): the other rows still answer, and ``verify`` names what happened to it."""
    try:
        event = ConsentEvent.from_record(json.loads(text or "null"))
    except ValueError:
        event = None
    if event is None:
        logger.warning("ledger row %d holds no valid consent event: run ledger verify", seq)
    return event


class Ledger:
    """The ledger in one database. Safe to share between tasks; any number of processes
    and replicas may append to the same database at once."""

    def __init__(self, engine: AsyncEngine, key: bytes) -> None:
        self._engine = engine
        self._key = key

    @classmethod
    async def open(cls, url: str, key: bytes | str, *, migrating: bool = True) -> Ledger:
        """Connect and bring the schema up to date (``migrating``, as the app does), or
        find it as it is (the operator's commands: nothing created). ConfigurationError
        for a URL or key that cannot work, LedgerError for an unreachable database, no
        ledger there (not ``migrating``), or a newer schema."""
        raw = key.encode() if isinstance(key, str) else key
        if len(raw) < MIN_KEY_LENGTH:
            raise ConfigurationError(f"{KEY_VARIABLE} must be at least {MIN_KEY_LENGTH} bytes")
        target = engine_url(url)
        if not migrating and target.get_backend_name() == "sqlite":
            # Connecting would create the file: a mistyped path is no ledger, not an empty one.
            if not Path(target.database or "").is_file():
                raise LedgerError("there is no consent ledger at that SQLite path")
        engine = create_engine(target)
        try:
            found = await (migrate(engine) if migrating else schema_version(engine))
        except BaseException as exc:
            await engine.dispose()
            if isinstance(exc, DB_ERRORS):
                raise LedgerError(
                    f"the consent ledger's database could not be opened ({type(exc).__name__}"
                    f"{driver_reason(exc, target)})"
                ) from exc
            raise
        logger.info(
            "consent ledger at %s (schema %d)", target.render_as_string(hide_password=True), found
        )
        return cls(engine, raw)

    async def close(self) -> None:
        await self._engine.dispose()

    def user_key(self, sub: str) -> str:
        """The pseudonym rows hold for a user: HMAC-SHA256 of the OIDC sub, hex."""
        return hmac.new(self._key, sub.encode(), hashlib.sha256).hexdigest()

    # ---- appending ----------------------------------------------------------------------

    async def record(self, sub: str, event: ConsentEvent) -> str:
        """Append the event, pending; returns its entry_id for ``confirm`` or ``abandon``."""
        entry_id = str(uuid.uuid4())
        columns = {"entry_id": entry_id, "kind": EntryKind.EVENT.value, "ref": None}
        event_json = canonical(event.as_record())
        await self._write(lambda conn: self._append(conn, columns, self.user_key(sub), event_json))
        return entry_id

    async def confirm(self, entry_id: str) -> None:
        """Append that the event's write to Auth0 succeeded: from now on it is a consent."""
        await self._write(lambda conn: self._decide(conn, entry_id, EntryKind.CONFIRMED, None))

    async def abandon(self, entry_id: str, reason: str) -> None:
        """Append that the event's write to Auth0 failed (``reason``): it never took effect."""
        await self._write(lambda conn: self._decide(conn, entry_id, EntryKind.ABANDONED, reason))

    async def _write(self, step: Callable[[AsyncConnection], Any]) -> None:
        try:
            async with locked(self._engine) as conn:
                await step(conn)
        except DB_ERRORS as exc:
            raise LedgerError("the consent ledger could not be written") from exc

    async def _decide(
        self, conn: AsyncConnection, entry_id: str, kind: EntryKind, reason: str | None
    ) -> None:
        target = (
            await conn.execute(
                sa.select(LEDGER.c.user_key).where(
                    LEDGER.c.entry_id == entry_id, LEDGER.c.kind == EntryKind.EVENT.value
                )
            )
        ).scalar_one_or_none()
        if target is None:
            raise LedgerError(f"no pending consent event {entry_id!r} in the ledger")
        decided = await conn.execute(sa.select(LEDGER.c.kind).where(LEDGER.c.ref == entry_id))
        if (earlier := decided.scalar_one_or_none()) is not None:
            raise LedgerError(f"consent event {entry_id!r} is already {earlier}")
        columns = {"entry_id": str(uuid.uuid4()), "kind": kind.value, "ref": entry_id}
        await self._append(conn, columns, target, None, reason)

    async def _append(
        self,
        conn: AsyncConnection,
        columns: dict[str, Any],
        user_key: str,
        event_json: str | None,
        reason: str | None = None,
    ) -> None:
        """Insert one row after the head; the caller holds the append lock."""
        head = await self._head(conn)
        row = {
            **columns,
            "seq": head.seq + 1,
            "recorded_at": _now_ms(),
            "user_key": user_key,
            "event": event_json,
            "reason": reason,
        }
        row_hash = chain_hash(head.row_hash, {name: row[name] for name in HASHED})
        await conn.execute(
            sa.insert(LEDGER).values(**row, prev_hash=head.row_hash, row_hash=row_hash)
        )

    # ---- reading ------------------------------------------------------------------------

    @staticmethod
    async def _head(conn: AsyncConnection) -> LedgerHead:
        last = (
            await conn.execute(
                sa.select(LEDGER.c.seq, LEDGER.c.row_hash).order_by(LEDGER.c.seq.desc()).limit(1)
            )
        ).first()
        return EMPTY if last is None else LedgerHead(int(last.seq), str(last.row_hash))

    async def head(self) -> LedgerHead:
        """The last row's seq and hash (``0:000…`` for an empty ledger)."""
        try:
            async with self._engine.connect() as conn:
                return await self._head(conn)
        except DB_ERRORS as exc:
            raise LedgerError("the consent ledger could not be read") from exc

    async def _scan(self, query: sa.Select[Any]) -> AsyncIterator[sa.Row[Any]]:
        """The rows ``query`` selects (ordered by seq, seq first), BATCH at a time, each
        batch on a connection of its own that is back in the pool before a row is handed
        out: a long scan holds no snapshot, and a scan stopped early holds nothing."""
        after = 0
        while True:
            try:
                async with self._engine.connect() as conn:
                    page = query.where(LEDGER.c.seq > after).limit(BATCH)
                    rows = (await conn.execute(page)).all()
            except DB_ERRORS as exc:
                raise LedgerError("the consent ledger could not be read") from exc
            for row in rows:
                yield row
            if len(rows) < BATCH:
                return
            after = int(rows[-1][0])

    async def verify(self, expected_head: str | LedgerHead | None = None) -> Verification:
        """Walk the chain from the first row (``ChainWalk``). Finds an edited row (any
        column), reordered rows, a row deleted from the middle, and rows the ledger's own
        writes never make (a decision naming another user's event, or none). With
        ``expected_head`` (a head printed earlier), also rows deleted from the end and a
        chain recomputed after an edit."""
        expected = (
            LedgerHead.parse(expected_head) if isinstance(expected_head, str) else expected_head
        )
        columns = [LEDGER.c[name] for name in HASHED]
        query = sa.select(*columns, LEDGER.c.prev_hash, LEDGER.c.row_hash).order_by(LEDGER.c.seq)
        walk = ChainWalk(expected)
        async for row in self._scan(query):
            broken = walk.step(row._mapping)
            if broken is not None:
                return broken
        return walk.end()

    async def history(self, sub: str) -> list[LedgerEntry]:
        """The user's events, oldest first, each with its state."""
        query = (
            sa.select(LEDGER.c.seq, LEDGER.c.entry_id, LEDGER.c.recorded_at, LEDGER.c.kind)
            .add_columns(LEDGER.c.ref, LEDGER.c.event, LEDGER.c.reason)
            .where(LEDGER.c.user_key == self.user_key(sub))
            .order_by(LEDGER.c.seq)
        )
        entries: dict[str, LedgerEntry] = {}
        async for row in self._scan(query):
            if row.kind == EntryKind.EVENT:
                event = _event(row.seq, row.event)
                if event is not None:
                    entries[row.entry_id] = LedgerEntry(
                        row.seq, row.entry_id, row.recorded_at, event
                    )
            elif (pending := entries.get(row.ref)) is not None:
                entries[row.ref] = replace(
                    pending,
                    state=EntryState(row.kind),
                    decided_at=row.recorded_at,
                    reason=row.reason,
                )
        return list(entries.values())

    async def stats(self, version: str) -> dict[str, int]:
        """For the terms events of ``version``: ``given`` and ``withdrawn`` count the
        confirmed events (not users: one who accepted, withdrew and accepted again counts
        twice in ``given``), ``pending`` and ``abandoned`` the others; ``malformed`` the
        rows that hold no event, when there are any."""
        decision = LEDGER.alias("decision")
        query = (
            sa.select(LEDGER.c.seq, LEDGER.c.event, decision.c.kind)
            .select_from(LEDGER.outerjoin(decision, decision.c.ref == LEDGER.c.entry_id))
            .where(LEDGER.c.kind == EntryKind.EVENT.value)
            .order_by(LEDGER.c.seq)
        )
        counts = {"given": 0, "withdrawn": 0, "pending": 0, "abandoned": 0}
        malformed = 0
        async for row in self._scan(query):
            event = _event(row.seq, row.event)
            if event is None:
                malformed += 1
                continue
            if event.version != version or not event.terms:
                continue
            state = EntryState(row.kind or EntryState.PENDING)
            if state is EntryState.CONFIRMED:
                counts[event.action.value] += 1
            else:
                counts[state.value] += 1
        return {**counts, "malformed": malformed} if malformed else counts
