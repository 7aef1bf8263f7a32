"""Benchmark: how long ``Ledger.verify`` takes over a large SQLite ledger.

    python -m bench.ledger [--rows 1000000] [--path ledger.db]

Fills a fresh SQLite ledger with ``--rows`` rows (events, every other one confirmed) in
one bulk transaction, computing the same hash chain ``Ledger`` writes (one transaction per
append would measure fsync, not the ledger), then times a full ``verify()`` and prints
rows/s, seconds and the process's peak memory (verify streams: it stays flat).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from consent_middleware._events import CollectionMethod, ConsentAction, ConsentEvent
from consent_middleware._ledger import Ledger
from consent_middleware._ledger_chain import GENESIS, HASHED, EntryKind, canonical, chain_hash

KEY = "bench-ledger-key-" + "k" * 32
CHUNK = 20_000
EVENT = canonical(
    ConsentEvent(
        action=ConsentAction.GIVEN,
        version="v2",
        date=1_700_000_000_000,
        text_sha256="a" * 64,
        text_details="https://app.example.com/terms",
        method=CollectionMethod.TERMS_PAGE,
    ).as_record()
)


def rows(count: int, ledger: Ledger) -> Iterator[tuple[object, ...]]:
    prev, pending = GENESIS, ""
    for seq in range(1, count + 1):
        entry_id = str(uuid.uuid4())
        if seq % 2 == 0:  # the confirmation of the event just before
            kind, ref, event = EntryKind.CONFIRMED.value, pending, None
        else:
            kind, ref, event, pending = EntryKind.EVENT.value, None, EVENT, entry_id
        user_key = ledger.user_key(f"auth0|{(seq + 1) // 2 % 50_000}")
        values = (seq, 1_700_000_000_000 + seq, entry_id, kind, ref, user_key, event, None)
        row_hash = chain_hash(prev, dict(zip(HASHED, values, strict=True)))
        yield (*values, prev, row_hash)
        prev = row_hash


def fill(path: Path, count: int, ledger: Ledger) -> None:
    columns = ", ".join((*HASHED, "prev_hash", "row_hash"))
    insert = f"INSERT INTO consent_ledger ({columns}) VALUES ({', '.join('?' * 10)})"  # noqa: S608
    db = sqlite3.connect(path)
    try:
        with db:
            produced = rows(count, ledger)
            while chunk := [row for _, row in zip(range(CHUNK), produced, strict=False)]:
                db.executemany(insert, chunk)
    finally:
        db.close()


async def bench(path: Path, count: int) -> None:
    url = f"sqlite:///{path.resolve()}"
    ledger = await Ledger.open(url, KEY)  # creates the schema
    try:
        started = time.perf_counter()
        fill(path, count, ledger)
        filled = time.perf_counter() - started
        print(f"fill:   {count:,} rows in {filled:.1f} s ({count / filled:,.0f} rows/s)")
        started = time.perf_counter()
        result = await ledger.verify()
        took = time.perf_counter() - started
    finally:
        await ledger.close()
    assert result.ok and result.rows == count, result
    print(
        f"verify: {count:,} rows in {took:.1f} s ({count / took:,.0f} rows/s), head {result.head}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (RSS) of the whole run: {peak:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, help="the SQLite file (default: a temp file)")
    args = parser.parse_args()
    if args.path is not None:
        if args.path.exists():
            parser.error(f"{args.path} exists: the benchmark fills a fresh ledger")
        asyncio.run(bench(args.path, args.rows))
        return
    with tempfile.TemporaryDirectory(prefix="consent-ledger-bench-") as directory:
        asyncio.run(bench(Path(directory) / "ledger.db", args.rows))


if __name__ == "__main__":
    main()
