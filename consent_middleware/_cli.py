"""``consent-middleware``: operator commands (``python -m consent_middleware`` too).

consent-middleware ledger verify [--head SEQ:HASH]
consent-middleware ledger head
consent-middleware ledger export --user SUB
consent-middleware ledger stats --version V
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._exceptions import ConfigurationError, LedgerError

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._ledger_chain import LedgerHead

URL_VARIABLE = "CONSENT_LEDGER_URL"
KEY_VARIABLE = "CONSENT_LEDGER_KEY"
# Exit statuses: 1 is kept for "the ledger is not intact", so a cron job or CI step can
# tell tampering from a command that could not check at all.
BROKEN, UNUSABLE = 1, 2

EPILOG = f"""environment:
  {URL_VARIABLE}   the ledger's database (--url wins):
                       sqlite:///relative.db, sqlite:////absolute/path.db,
                       postgresql://user:password@host:port/db
  {KEY_VARIABLE}   the key of the users' pseudonyms (HMAC of the OIDC sub), at least
                       32 bytes; kept apart from AUTH0_SECRET

exit status: 0 done (verify: the chain is intact), 1 verify found the chain broken,
2 a missing or invalid setting, or the database could not be reached.

Keep the output of `ledger head` somewhere the database's admins cannot write, and pass it
to `ledger verify --head`: only then are rows deleted from the end detected.
"""


def _head(text: str) -> LedgerHead:
    from ._ledger_chain import LedgerHead

    try:
        return LedgerHead.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(
        prog="consent-middleware",
        description="Operator commands of consent-middleware.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    areas = command.add_subparsers(dest="area", required=True, metavar="{ledger}")
    ledger = areas.add_parser(
        "ledger",
        help="the consent ledger: verify, head, export, stats",
        description="The consent ledger (GDPR Art. 7(1) proof of consent).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ledger.add_argument("--url", help=f"the ledger's database URL (default: ${URL_VARIABLE})")
    commands = ledger.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check the hash chain; exit 1 if broken")
    verify.add_argument(
        "--head",
        type=_head,
        metavar="SEQ:HASH",
        help="a head printed earlier by `ledger head`: also detects deleted tail rows",
    )
    commands.add_parser("head", help="print the last row as SEQ:HASH")
    export = commands.add_parser("export", help="a user's entries as JSON lines")
    export.add_argument("--user", required=True, metavar="SUB", help="the user's OIDC sub")
    stats = commands.add_parser("stats", help="confirmed given/withdrawn counts, as JSON")
    stats.add_argument("--version", required=True, help="the terms version")
    return command


async def _run(ledger: Ledger, args: argparse.Namespace) -> int:
    if args.command == "verify":
        result = await ledger.verify(args.head)
        if not result.ok:
            print(f"broken at seq {result.broken_seq}: {result.reason}")
            if result.rows:
                print(f"{result.rows} rows intact before it, up to {result.head}")
            return BROKEN
        print(f"ok: {result.rows} rows, head {result.head}")
    elif args.command == "head":
        print(await ledger.head())
    elif args.command == "export":
        entries = await ledger.history(args.user)
        for entry in entries:
            print(json.dumps(entry.as_record(), sort_keys=True))
        if not entries:
            # A user who never chose looks like a mistyped sub or another key: say so.
            print(
                "consent-middleware: no entries for this user (check the sub, and that "
                f"{KEY_VARIABLE} is the key the app uses)",
                file=sys.stderr,
            )
    else:
        counts = await ledger.stats(args.version)
        print(json.dumps({"version": args.version, **counts}, sort_keys=True))
    return 0


async def _open_and_run(url: str, key: str, args: argparse.Namespace) -> int:
    from ._ledger import Ledger

    # Every command reads: the ledger is found as it is, never created or migrated.
    ledger = await Ledger.open(url, key, migrating=False)
    try:
        return await _run(ledger, args)
    finally:
        await ledger.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = args.url or os.environ.get(URL_VARIABLE, "")
    key = os.environ.get(KEY_VARIABLE, "")
    # Only export turns a sub into its pseudonym; verify, head and stats read rows as they
    # are, so an auditor can check a ledger without the key (an unset one opens it with a
    # throwaway key that is never used).
    needed = [(url, URL_VARIABLE)] + ([(key, KEY_VARIABLE)] if args.command == "export" else [])
    for value, variable in needed:
        if not value:
            print(f"consent-middleware: {variable} is not set", file=sys.stderr)
            return UNUSABLE
    key = key or secrets.token_hex(32)
    try:
        return asyncio.run(_open_and_run(url, key, args))
    except ImportError:
        print(
            "consent-middleware: the ledger needs its extra: "
            "pip install 'consent-middleware[ledger]'",
            file=sys.stderr,
        )
    except (ConfigurationError, LedgerError) as exc:
        print(f"consent-middleware: {exc}", file=sys.stderr)
    return UNUSABLE
