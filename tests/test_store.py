"""Behaviour of every store: accounts, keys, revocation seen through KeyCache, events.

The same tests run against SQLite and PostgreSQL (``-m postgres`` selects the latter;
each PostgreSQL test gets a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from distillguard.config import Settings, SettingsError
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keycache import KeyCache
from distillguard.telemetry.keys import KEY_PREFIX
from distillguard.telemetry.store import VERSION_UNKNOWN, Store, open_store, store_names
from distillguard.telemetry.writer import EventWriter


# Not DISTILLGUARD_*: Settings.load rejects variables of that prefix that name no setting.
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""
    return Settings.load(env={}, data_dir=str(tmp_path), store=request.param, postgres_dsn=dsn)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    opened = open_store(settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other_store(settings: Settings) -> Iterator[Store]:
    """A second instance on the same data, as the CLI in another process would open."""
    opened = open_store(settings)
    try:
        yield opened
    finally:
        opened.close()


def make_event(i: int, *, ts: float | None = None, account: str | None = "acme") -> RequestEvent:
    return RequestEvent(
        ts=1_700_000_000.0 + i if ts is None else ts,
        request_id=f"req-{i}",
        endpoint="/v1/chat/completions",
        status=200,
        latency_ms=12.5,
        account=account,
        key_id="key_0123",
        client_addr="10.0.0.1",
        user_agent="OpenAI/Python 1.40",
        model="smollm2-135m-instruct",
        params={"temperature": 0.7, "max_tokens": 64, "stop": ["\n"], "nested": {"a": [1, 2]}},
        prompt=f"prompt number {i}",
        prompt_tokens=10,
        completion_tokens=20 + i,
        stream=bool(i % 2),
        watermark={"scheme": "green", "key_id": "wk1", "params": {"gamma": 0.25}},
    )


# --- registry -------------------------------------------------------------------------
@pytest.mark.parametrize("name", store_names())
def test_every_registered_store_opens_and_works(name: str, request, tmp_path) -> None:
    dsn = request.getfixturevalue("pg_dsn") if name == "postgres" else ""
    settings = Settings.load(env={}, data_dir=str(tmp_path), store=name, postgres_dsn=dsn)
    opened = open_store(settings)
    try:
        assert isinstance(opened, Store)
        assert opened.name == name
        assert opened.count_events() == 0
        assert opened.list_keys() == []
    finally:
        opened.close()


def test_unknown_store_name_is_a_settings_error(tmp_path) -> None:
    with pytest.raises(SettingsError, match="'store' = 'mysql': must be one of postgres, sqlite"):
        open_store(Settings.load(env={}, data_dir=str(tmp_path), store="mysql"))


def test_postgres_without_dsn_names_the_setting(tmp_path) -> None:
    with pytest.raises(SettingsError, match="postgres_dsn"):
        open_store(Settings.load(env={}, data_dir=str(tmp_path), store="postgres"))


# --- accounts and keys ------------------------------------------------------------------
def test_create_key_returns_a_key_that_lookup_finds(store: Store) -> None:
    record, plaintext = store.create_key("acme", name="ci")
    assert plaintext.startswith(KEY_PREFIX)
    assert len(plaintext) >= len(KEY_PREFIX) + 43  # 32 random bytes, base64url
    assert record.key_id.startswith("key_")
    assert plaintext.startswith(record.prefix) and len(record.prefix) < 16
    assert (record.account, record.name, record.revoked_at) == ("acme", "ci", None)
    assert store.lookup_key(plaintext) == record
    assert store.get_key(record.key_id) == record
    assert store.lookup_key(plaintext + "x") is None
    assert store.lookup_key("sk-dg-unknown") is None


def test_two_keys_differ(store: Store) -> None:
    (_, one), (_, two) = store.create_key("acme"), store.create_key("acme")
    assert one != two
    assert store.lookup_key(one).key_id != store.lookup_key(two).key_id


def test_create_key_creates_the_account_once(store: Store) -> None:
    assert store.get_account("acme") is None
    store.create_key("acme")
    created = store.get_account("acme")
    assert created is not None and created.name == "acme"
    store.create_key("acme")
    store.create_key("globex")
    assert [a.name for a in store.list_accounts()] == ["acme", "globex"]
    assert store.get_account("acme") == created
    assert store.ensure_account("acme") == created
    assert store.ensure_account("initech").name == "initech"


@pytest.mark.parametrize("bad", ["", "   ", "a" * 201, "tab\there"])
def test_bad_account_names_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(ValueError, match="account name"):
        store.create_key(bad)
    assert store.list_accounts() == []


def test_list_keys_filters_by_account_and_keeps_creation_order(store: Store) -> None:
    a1, _ = store.create_key("acme")
    g1, _ = store.create_key("globex")
    a2, _ = store.create_key("acme")
    assert [k.key_id for k in store.list_keys()] == [a1.key_id, g1.key_id, a2.key_id]
    assert [k.key_id for k in store.list_keys("acme")] == [a1.key_id, a2.key_id]
    assert store.list_keys("nobody") == []


def test_revoke_marks_the_key_and_keeps_the_first_time(store: Store) -> None:
    record, plaintext = store.create_key("acme")
    before = time.time()
    assert store.revoke_key(record.key_id) is True
    revoked = store.lookup_key(plaintext)
    assert revoked is not None and revoked.revoked_at is not None
    assert revoked.revoked_at >= before - 1 and not revoked.active
    assert store.revoke_key(record.key_id) is True
    assert store.lookup_key(plaintext).revoked_at == revoked.revoked_at
    assert store.revoke_key("key_doesnotexist") is False


# --- KeyCache against a second store instance (as the CLI would revoke) ----------------------
def test_keycache_sees_a_revocation_from_another_instance_on_the_next_get(
    store: Store, other_store: Store
) -> None:
    record, plaintext = store.create_key("acme")
    exact = store.keys_version() != VERSION_UNKNOWN
    ttl = 3600.0 if exact else 0.2
    cache = KeyCache(store, ttl=ttl)
    assert cache.get(plaintext) == record

    assert other_store.revoke_key(record.key_id)
    if not exact:
        # A store that cannot tell promises "within ttl", not "next request".
        time.sleep(ttl)
    seen = cache.get(plaintext)
    assert seen is not None and seen.revoked_at is not None


def test_keycache_reads_the_store_once_while_nothing_changes(store: Store) -> None:
    record, plaintext = store.create_key("acme")
    lookups = []
    real_lookup = store.lookup_key

    class Counting:
        def __getattr__(self, name):
            return getattr(store, name)

        def lookup_key(self, key):
            lookups.append(key)
            return real_lookup(key)

    cache = KeyCache(Counting(), ttl=60.0)  # type: ignore[arg-type]
    for _ in range(50):
        assert cache.get(plaintext) == record
        assert cache.get("sk-dg-made-up") is None
    assert len(lookups) == 2
    store.write_events([make_event(1)])  # event traffic must not invalidate keys
    assert cache.get(plaintext) == record
    assert len(lookups) == 2


def test_keycache_sees_a_key_created_by_another_instance(store: Store, other_store: Store) -> None:
    cache = KeyCache(store, ttl=0.2)
    record, plaintext = other_store.create_key("acme")
    assert cache.get(plaintext) == record


async def test_keycache_aget_matches_get(store: Store, other_store: Store) -> None:
    record, plaintext = store.create_key("acme")
    cache = KeyCache(store, ttl=3600.0 if store.keys_version() != VERSION_UNKNOWN else 0.0)
    assert await cache.aget(plaintext) == record
    other_store.revoke_key(record.key_id)
    assert (await cache.aget(plaintext)).revoked_at is not None


# --- events ----------------------------------------------------------------------------
def test_events_round_trip_every_field(store: Store) -> None:
    events = [make_event(i) for i in range(3)]
    events.append(
        RequestEvent(ts=1_700_000_100.0, request_id="req-failed", endpoint="/v1/models",
                     status=401, latency_ms=0.3, error_type="invalid_request_error",
                     error_code="invalid_api_key")
    )
    store.write_events(events)
    assert store.count_events() == 4
    assert [e.to_dict() for e in store.iter_events()] == [e.to_dict() for e in events]


def test_iter_events_filters_by_time_and_account_in_time_order(store: Store) -> None:
    store.write_events([make_event(3, account="globex"), make_event(1), make_event(2)])
    store.write_events([make_event(0)])
    assert [e.request_id for e in store.iter_events()] == ["req-0", "req-1", "req-2", "req-3"]
    since = 1_700_000_001.0
    assert [e.request_id for e in store.iter_events(since=since)] == ["req-1", "req-2", "req-3"]
    assert [e.request_id for e in store.iter_events(since=since, until=since + 2)] == [
        "req-1", "req-2"]
    assert [e.request_id for e in store.iter_events(account="globex")] == ["req-3"]
    assert list(store.iter_events(account="nobody")) == []


def test_a_retried_batch_does_not_duplicate_events(store: Store) -> None:
    store.write_events([make_event(1), make_event(2)])
    store.write_events([make_event(2), make_event(3)])
    assert store.count_events() == 3
    assert [e.request_id for e in store.iter_events()] == ["req-1", "req-2", "req-3"]


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    broken = make_event(2)
    broken.status = None  # type: ignore[assignment]  # violates NOT NULL
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 and psycopg raise different types
        store.write_events([make_event(1), broken, make_event(3)])
    assert store.count_events() == 0
    store.write_events([make_event(1)])  # the store is still usable
    assert store.count_events() == 1


def test_awkward_values_are_stored_not_refused(store: Store) -> None:
    odd = make_event(1)
    odd.prompt = "nul\x00inside"
    odd.params = {"seed": 10**30, "stop": ["\x00"], "user": "é😀", "lone": "\ud800"}
    odd.user_agent = "agent\udcff"  # a lone surrogate, as Python's json module lets through
    store.write_events([odd])
    (back,) = store.iter_events()
    assert back.user_agent == "agent\ufffd" and back.params["lone"] == "\ufffd"
    assert back.prompt is not None and back.prompt.startswith("nul") and back.prompt.endswith(
        "inside")
    assert back.params["user"] == "é😀"
    assert float(back.params["seed"]) == 1e30


def test_iter_events_streams_more_rows_than_one_chunk(store: Store) -> None:
    store.write_events([make_event(i) for i in range(2500)])
    seen = 0
    for seen, event in enumerate(store.iter_events(), start=1):
        assert event.request_id == f"req-{seen - 1}"
    assert seen == 2500


def test_ten_thousand_events_through_the_writer_land_exactly_once(store: Store) -> None:
    writer = EventWriter(store, batch_size=500, flush_interval=0.05)
    for i in range(10_000):
        writer.submit(make_event(i))
    assert writer.close(timeout=60)
    assert store.count_events() == 10_000
    ids = [e.request_id for e in store.iter_events()]
    assert len(set(ids)) == 10_000


def test_reads_from_threads_while_the_writer_writes(store: Store) -> None:
    record, plaintext = store.create_key("acme")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(100):
                assert store.lookup_key(plaintext) == record
                store.keys_version()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with EventWriter(store, batch_size=50, flush_interval=0.01) as writer:
        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for i in range(2000):
            writer.submit(make_event(i))
        for thread in threads:
            thread.join()
    assert errors == []
    assert store.count_events() == 2000


def test_recent_events_and_histogram_read_by_index(store: Store):
    t0 = 1_700_000_000.0
    events = [make_event(i, ts=t0 + 10 * i, account="acme" if i % 3 else "zeta")
              for i in range(30)]
    store.write_events(events)
    recent = store.recent_events("acme", 5)
    assert [e.ts for e in recent] == sorted((e.ts for e in events if e.account == "acme"),
                                            reverse=True)[:5]
    # 300 s in buckets of 100 s: 10 events each, both accounts in every bucket.
    rows = store.event_histogram(since=t0, until=t0 + 300, bucket_s=100.0)
    assert rows == [(0, 10, 2), (1, 10, 2), (2, 10, 2)]
    rows = store.event_histogram(since=t0 + 5, until=t0 + 300, bucket_s=100.0, account="zeta")
    assert sum(n for _, n, _ in rows) == 9 and all(a == 1 for _, _, a in rows)
    assert [b for b, _, _ in rows] == [0, 1, 2]
