from __future__ import annotations

from consent_middleware._transactions import (
    Expectation,
    Purpose,
    Transaction,
    TransactionStore,
)
from tests.conftest import make_settings
from tests.test_session import jar


def test_transactions_are_per_state() -> None:
    store = TransactionStore(make_settings())
    a = Transaction("https://app.example.com/x")
    b = Transaction("https://app.example.com/y", Purpose.SILENT, Expectation.CONSENT)
    cookies = jar([store.save(a), store.save(b)])
    assert store.load(a.state, cookies) == a
    assert store.load(b.state, cookies) == b
    assert store.load("state-c", cookies) is None
    # A transaction cookie copied under another state name is refused.
    assert store.load("state-x", {"__txn_state-x": cookies["__txn_" + a.state]}) is None
