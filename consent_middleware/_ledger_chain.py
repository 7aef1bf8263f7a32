"""The ledger's hash chain: how rows are hashed, and the walk that checks them.

Each row's ``row_hash`` is SHA-256 over the previous row's hash and the canonical JSON of
its other columns (``HASHED``), one chain through the whole table from ``GENESIS``.
``ChainWalk`` follows it row by row: the hashes (an edited, reordered or deleted row), and
the rows' shape, as the ledger's own writes make them (an event, then at most one decision
naming it, for the same user): a chain recomputed after rows were forged fails there.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from ._events import ConsentEvent

GENESIS = "0" * 64
# Every column but the hashes, in the order rows are read back.
HASHED = ("seq", "recorded_at", "entry_id", "kind", "ref", "user_key", "event", "reason")


class EntryKind(enum.StrEnum):
    EVENT = "event"
    CONFIRMED = "confirmed"
    ABANDONED = "abandoned"


def canonical(value: object) -> str:
    """The one JSON text of a value: sorted keys, no spaces (what the hashes cover)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def chain_hash(prev_hash: str, columns: Mapping[str, object]) -> str:
    return hashlib.sha256((prev_hash + canonical(columns)).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerHead:
    """The last row: its seq and row_hash, written ``seq:hash``."""

    seq: int
    row_hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.row_hash}"

    @classmethod
    def parse(cls, text: str) -> Self:
        seq, _, row_hash = text.strip().partition(":")
        if not (seq.isdigit() and len(row_hash) == 64):
            raise ValueError("a ledger head is written SEQ:HASH (64 hex digits)")
        try:
            bytes.fromhex(row_hash)
        except ValueError:
            raise ValueError("a ledger head is written SEQ:HASH (64 hex digits)") from None
        return cls(int(seq), row_hash.lower())


EMPTY = LedgerHead(0, GENESIS)


@dataclass(frozen=True)
class Verification:
    """The outcome of ``verify``: ``rows`` checked, the ``head`` reached, and where the
    chain first breaks (``broken_seq``) and why."""

    ok: bool
    rows: int
    head: LedgerHead
    broken_seq: int | None = None
    reason: str | None = None


class ChainWalk:
    """``Ledger.verify``'s walk over rows in seq order: ``step`` each row (a mapping of the
    HASHED columns, ``prev_hash`` and ``row_hash``), which answers the first break found;
    ``end`` once there are no more. Memory holds only the events not yet decided."""

    def __init__(self, expected: LedgerHead | None) -> None:
        self.expected = expected
        self.last, self.rows = EMPTY, 0
        # entry_id -> user_key of each event no decision has named yet.
        self._undecided: dict[str, str] = {}

    def _broken(self, seq: int, reason: str) -> Verification:
        return Verification(False, self.rows, self.last, seq, reason)

    def step(self, values: Mapping[Any, Any]) -> Verification | None:
        seq, last, expected = values["seq"], self.last, self.expected
        if seq != last.seq + 1:
            return self._broken(seq, f"seq {last.seq + 1} is missing: a row was deleted")
        if values["prev_hash"] != last.row_hash:
            return self._broken(seq, "prev_hash is not the previous row's hash: rows reordered")
        computed = chain_hash(last.row_hash, {name: values[name] for name in HASHED})
        if values["row_hash"] != computed:
            return self._broken(seq, "row_hash does not match the row: the row was edited")
        if expected is not None and seq == expected.seq and computed != expected.row_hash:
            # A chain recomputed after an edit: the edit may be in any row up to here, so
            # none of them is vouched for.
            return Verification(
                False,
                0,
                EMPTY,
                seq,
                f"the chain up to seq {seq} differs from the expected head {expected}: "
                "a row at or before it was changed and the chain recomputed, or the head "
                "is another ledger's",
            )
        wrong = self._misshapen(values)
        if wrong is not None:
            return self._broken(seq, f"{wrong}: the ledger never writes such a row")
        self.last, self.rows = LedgerHead(seq, computed), self.rows + 1
        return None

    def _misshapen(self, values: Mapping[Any, Any]) -> str | None:
        """What is wrong with the row's shape, if anything. (The schema refuses a kind
        other than the three, and a second decision naming the same event.)"""
        kind, ref, user_key = values["kind"], values["ref"], values["user_key"]
        if kind == EntryKind.EVENT:
            if ref is not None or not _holds_an_event(values["event"]):
                return "an event row without a valid event, or naming another row"
            if values["entry_id"] in self._undecided:
                return "an event row repeating an earlier entry_id"
            self._undecided[values["entry_id"]] = user_key
            return None
        owner = self._undecided.pop(ref, None)
        if values["event"] is not None or owner is None:
            return "a decision naming no earlier undecided event"
        if owner != user_key:
            return "a decision naming another user's event"
        return None

    def end(self) -> Verification:
        expected = self.expected
        if expected is not None and self.last.seq < expected.seq:
            return self._broken(
                self.last.seq + 1,
                f"the ledger ends at seq {self.last.seq}, before the expected head {expected}: "
                "rows were deleted from the end (or anywhere, the rest renumbered and the "
                "chain recomputed)",
            )
        return Verification(True, self.rows, self.last)


def _holds_an_event(text: object) -> bool:
    """Whether an event row's text is a consent event, as the ledger's readers parse it (a
    row emptied to ``null`` or ``{}`` would drop a withdrawal from ``export`` and ``stats``)."""
    if not isinstance(text, str):
        return False
    try:
        return ConsentEvent.from_record(json.loads(text)) is not None
    except ValueError:
        return False
