"""The transaction store: per-state cookies, bound to the browser, at most a few per browser."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

from consent_middleware._jose import derive_key, encrypt
from consent_middleware._redirects import MAX_RETURN_TO
from consent_middleware._transactions import (
    MAX_TRANSACTIONS,
    TRANSACTION_COOKIE_BUDGET,
    TRANSACTION_LIFETIME,
    Expectation,
    Purpose,
    Transaction,
    TransactionStore,
)
from tests.conftest import make_settings
from tests.test_session import jar

APP = "https://app.example.com"


def deleted(headers: list[bytes]) -> set[str]:
    names: set[str] = set()
    for header in headers:
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header.decode())
        names |= {name for name, morsel in cookie.items() if morsel["max-age"] == "0"}
    return names


def test_transactions_are_per_state() -> None:
    store = TransactionStore(make_settings())
    a, headers_a = store.begin(f"{APP}/x", {})
    cookies = jar(headers_a)
    b, headers_b = store.begin(f"{APP}/y", cookies, Purpose.SILENT, Expectation.CONSENT)
    cookies = {**cookies, **jar(headers_b)}
    assert store.load(a.state, cookies) == a
    assert store.load(b.state, cookies) == b
    assert (b.purpose, b.expect) == (Purpose.SILENT, Expectation.CONSENT)
    assert store.load("state-c", cookies) is None
    # A transaction cookie copied under another state name is refused.
    copied = {**cookies, store.cookie_name("state-x"): cookies[store.cookie_name(a.state)]}
    assert store.load("state-x", copied) is None


def test_payload_keeps_the_nextjs_auth0_v4_fields() -> None:
    tx = Transaction(f"{APP}/x", binding_sha256="digest")
    payload = tx.to_payload()
    assert {"state", "nonce", "codeVerifier", "returnTo", "responseType"} <= set(payload)
    assert payload["responseType"] == "code" and payload["returnTo"] == f"{APP}/x"
    assert Transaction.from_payload(payload) == tx
    assert Transaction.from_payload({**payload, "createdAt": "soon"}) is None
    assert Transaction.from_payload({**payload, "createdAt": [1]}) is None


def test_one_binding_per_browser_shared_by_its_logins() -> None:
    store = TransactionStore(make_settings())
    a, headers_a = store.begin(f"{APP}/x", {})
    first = jar(headers_a)
    b, headers_b = store.begin(f"{APP}/y", first)
    second = jar(headers_b)
    assert second[store.binding_cookie] == first[store.binding_cookie]
    assert a.binding_sha256 == b.binding_sha256 != ""


def test_transaction_refused_without_the_browser_binding() -> None:
    store = TransactionStore(make_settings())
    tx, headers = store.begin(f"{APP}/x", {})
    cookies = jar(headers)
    name = store.cookie_name(tx.state)
    assert store.load(tx.state, cookies) == tx
    # Copied alone into another browser: no binding there.
    assert store.load(tx.state, {name: cookies[name]}) is None
    # Copied into a browser that started a login of its own: another binding.
    _, other_headers = store.begin(f"{APP}/y", {})
    other = jar(other_headers)
    assert store.load(tx.state, {**other, name: cookies[name]}) is None
    # A malformed binding cookie is not reused: the next login gets a fresh one.
    _, fresh = store.begin(f"{APP}/z", {store.binding_cookie: "x;y"})
    assert len(jar(fresh)[store.binding_cookie]) == 43


def test_a_transaction_without_a_binding_is_refused() -> None:
    # Cookies written before the binding existed (or by another library) carry none.
    settings = make_settings()
    store = TransactionStore(settings)
    tx = Transaction(f"{APP}/x")
    value = encrypt(tx.to_payload(), derive_key(settings.secret), int(time.time()) + 60)
    _, headers = store.begin(f"{APP}/y", {})
    cookies = {**jar(headers), store.cookie_name(tx.state): value}
    assert store.load(tx.state, cookies) is None


def test_starting_a_login_evicts_the_oldest_beyond_the_cap() -> None:
    store = TransactionStore(make_settings())
    cookies: dict[str, str] = {}
    started: list[str] = []
    for i in range(MAX_TRANSACTIONS + 2):
        tx, headers = store.begin(f"{APP}/{i}", cookies)
        started.append(tx.state)
        gone = deleted(headers)
        cookies = {k: v for k, v in {**cookies, **jar(headers)}.items() if k not in gone}
        live = {k for k in cookies if k.startswith(store.transaction_prefix)}
        assert live == {store.cookie_name(s) for s in started[-MAX_TRANSACTIONS:]}
    assert all(store.load(s, cookies) is not None for s in started[-MAX_TRANSACTIONS:])


def test_long_transactions_are_evicted_by_size_first() -> None:
    store = TransactionStore(make_settings())
    long_address = f"{APP}/search?q=" + "a" * (MAX_RETURN_TO - len("/search?q="))
    cookies: dict[str, str] = {}
    started: list[str] = []
    for _ in range(MAX_TRANSACTIONS + 1):
        tx, headers = store.begin(long_address, cookies)
        started.append(tx.state)
        gone = deleted(headers)
        cookies = {k: v for k, v in {**cookies, **jar(headers)}.items() if k not in gone}
        live = [k for k in cookies if k.startswith(store.transaction_prefix)]
        assert sum(len(k) + len(cookies[k]) + 3 for k in live) <= TRANSACTION_COOKIE_BUDGET
    # Two of these fit the budget: the two newest.
    assert set(live) == {store.cookie_name(s) for s in started[-2:]}


def test_dead_transaction_cookies_are_evicted_and_other_cookies_left_alone() -> None:
    store = TransactionStore(make_settings())
    expired = encrypt(Transaction(f"{APP}/old").to_payload(), store.keys[0], 0)
    cookies = {
        store.cookie_name("tampered"): "not-a-jwe",
        store.cookie_name("expired"): expired,
        "__session": "x",
        "__txn_http-name": "x",  # not this store's name under https
    }
    _, headers = store.begin(f"{APP}/x", cookies)
    assert deleted(headers) == {store.cookie_name("tampered"), store.cookie_name("expired")}


def test_cookie_names_and_lifetime_follow_the_scheme() -> None:
    secure = TransactionStore(make_settings())
    assert secure.cookie_name("s") == "__Host-txn_s"
    assert secure.binding_cookie == "__Host-login_binding"
    plain = TransactionStore(make_settings(app_base_url="http://localhost:8000"))
    assert plain.cookie_name("s") == "__txn_s"  # nextjs-auth0 v4's name
    assert plain.binding_cookie == "__login_binding"
    _, headers = plain.begin("http://localhost:8000/", {})
    assert all(f"Max-Age={TRANSACTION_LIFETIME}" in h.decode() for h in headers)
    assert TRANSACTION_LIFETIME == 600


def test_a_long_return_address_is_kept_as_its_path() -> None:
    store = TransactionStore(make_settings())
    fits = f"{APP}/search?q=" + "a" * (MAX_RETURN_TO - len("/search?q="))
    tx, _ = store.begin(fits, {})
    assert tx.return_to == fits
    tx, _ = store.begin(fits + "a", {})
    assert tx.return_to == f"{APP}/search"


def test_a_cookie_that_is_not_a_transaction_is_refused() -> None:
    store = TransactionStore(make_settings())
    _, headers = store.begin(f"{APP}/x", {})
    value = encrypt({"state": "s"}, store.keys[0], int(time.time()) + 60)
    assert store.load("s", {**jar(headers), store.cookie_name("s"): value}) is None
