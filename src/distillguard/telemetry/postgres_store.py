"""PostgreSQL store: the scale-out store, for several gateway processes or machines.

Tables live in the first schema of the connection's ``search_path`` (``public`` unless
the DSN says otherwise, e.g. ``options='-c search_path=dg'``). Connections run in
autocommit mode with explicit transactions, so no reader ever sits "idle in transaction".

PostgreSQL has no per-connection change counter like SQLite's ``data_version``, so
``keys_version()`` answers ``VERSION_UNKNOWN`` and the gateway's ``KeyCache`` keeps a
key for at most ``key_cache_ttl`` seconds: a revocation takes effect within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from distillguard.config import SettingsError
from distillguard.telemetry.keys import (
    Account,
    KeyRecord,
    check_account_name,
    generate_key,
    hash_key,
)
from distillguard.telemetry.rows import (
    EVENT_COLUMNS,
    FIRST_ID_SINCE,
    JSON_COLUMNS,
    KEY_COLUMNS,
    LAST_ID,
    dump_json,
    event_to_row,
    histogram_sql,
    recent_events_sql,
    row_to_event,
    select_events,
    select_events_after,
)
from distillguard.telemetry.store import VERSION_UNKNOWN

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.telemetry.events import RequestEvent

_ITER_CHUNK = 1000
# Any fixed number: serialises CREATE TABLE IF NOT EXISTS between processes starting at
# once, which otherwise can fail with a unique violation in the system catalogs.
_SCHEMA_LOCK_ID = 0x64697374  # "dist"
# Held by each event batch until it commits, so that ids are taken and committed in the
# same order by every process: an identity column alone hands out ids at insert time,
# and a batch that commits after a later-numbered one would be skipped by a reader
# tailing the table by id (detection does).
_EVENT_ORDER_LOCK_ID = 0x64676576  # "dgev"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name        text PRIMARY KEY,
    created_at  double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text PRIMARY KEY,
    key_hash    text NOT NULL UNIQUE,
    account     text NOT NULL REFERENCES accounts(name),
    prefix      text NOT NULL,
    name        text,
    created_at  double precision NOT NULL,
    revoked_at  double precision
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account);
CREATE TABLE IF NOT EXISTS request_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts                double precision NOT NULL,
    request_id        text NOT NULL UNIQUE,
    endpoint          text NOT NULL,
    status            integer NOT NULL,
    latency_ms        double precision NOT NULL,
    account           text,
    key_id            text,
    client_addr       text,
    user_agent        text,
    model             text,
    params            jsonb NOT NULL,
    prompt            text,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    stream            boolean NOT NULL,
    error_type        text,
    error_code        text,
    watermark         jsonb,
    features          jsonb
);
ALTER TABLE request_events ADD COLUMN IF NOT EXISTS features jsonb;
CREATE INDEX IF NOT EXISTS request_events_ts ON request_events(ts);
CREATE INDEX IF NOT EXISTS request_events_account_ts ON request_events(account, ts);
"""

_INSERT_EVENT = (
    f"INSERT INTO request_events ({', '.join(EVENT_COLUMNS)}) VALUES ("
    + ", ".join("%s::jsonb" if c in JSON_COLUMNS else "%s" for c in EVENT_COLUMNS)
    + ") ON CONFLICT (request_id) DO NOTHING"
)
_JSON_AT = [i for i, c in enumerate(EVENT_COLUMNS) if c in JSON_COLUMNS]


def _strip_nul(value: Any) -> Any:
    """``value`` with NUL characters replaced by U+FFFD, recursively.

    PostgreSQL text and jsonb cannot hold NUL, which a client may well send in a prompt;
    one such event must not make its whole batch fail forever.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_nul(v) for v in value]
    return value


def _pg_row(event: RequestEvent) -> list[Any]:
    row = event_to_row(event)
    for i, value in enumerate(row):
        if isinstance(value, str) and "\x00" in value:
            row[i] = value.replace("\x00", "\ufffd")
    for i in _JSON_AT:
        if row[i] is not None and "\\u0000" in row[i]:
            source = event.params if EVENT_COLUMNS[i] == "params" else event.watermark
            row[i] = dump_json(_strip_nul(source))
    return row



class _Link:
    """One connection used by one thread at a time, reopened after it breaks."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    @contextmanager
    def __call__(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self._dsn, autocommit=True)
            yield self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PostgresStore:
    """Accounts, keys and events in a PostgreSQL database."""

    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        # Control reads must not queue behind a batch of event inserts: two connections.
        self._control = _Link(dsn)
        self._events = _Link(dsn)
        self._tail = _Link(dsn)  # detection's reads of the log, opened on first use
        with self._control() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            conn.execute(_SCHEMA)

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresStore:
        """The store at ``settings.postgres_dsn``."""
        dsn = settings.postgres_dsn.reveal()
        if not dsn:
            raise SettingsError("setting 'postgres_dsn' is empty; store = postgres needs it")
        return cls(dsn)

    # --- control plane -------------------------------------------------------------
    def ensure_account(self, account: str) -> Account:
        name = check_account_name(account)
        with self._control() as conn:
            conn.execute(
                "INSERT INTO accounts (name, created_at) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, time.time()),
            )
            row = conn.execute(
                "SELECT name, created_at FROM accounts WHERE name = %s", (name,)
            ).fetchone()
        assert row is not None
        return Account(*row)

    def get_account(self, account: str) -> Account | None:
        with self._control() as conn:
            row = conn.execute(
                "SELECT name, created_at FROM accounts WHERE name = %s", (account,)
            ).fetchone()
        return Account(*row) if row else None

    def list_accounts(self) -> list[Account]:
        with self._control() as conn:
            rows = conn.execute(
                "SELECT name, created_at FROM accounts ORDER BY created_at, name"
            ).fetchall()
        return [Account(*row) for row in rows]

    def create_key(self, account: str, *, name: str | None = None) -> tuple[KeyRecord, str]:
        owner = check_account_name(account)
        new = generate_key()
        record = KeyRecord(new.key_id, owner, new.prefix, time.time(), None, name)
        with self._control() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO accounts (name, created_at) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (owner, record.created_at),
            )
            conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, account, prefix, name, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (record.key_id, new.key_hash, owner, record.prefix, name, record.created_at),
            )
        return record, new.plaintext

    def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        query = f"SELECT {KEY_COLUMNS} FROM api_keys"
        args: tuple[Any, ...] = ()
        if account is not None:
            query += " WHERE account = %s"
            args = (account,)
        with self._control() as conn:
            rows = conn.execute(query + " ORDER BY created_at, key_id", args).fetchall()
        return [KeyRecord(*row) for row in rows]

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._control() as conn:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        return KeyRecord(*row) if row else None

    def revoke_key(self, key_id: str) -> bool:
        with self._control() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s",
                (time.time(), key_id),
            )
            return cursor.rowcount > 0

    def lookup_key(self, plaintext: str) -> KeyRecord | None:
        with self._control() as conn:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = %s",
                (hash_key(plaintext),),
            ).fetchone()
        return KeyRecord(*row) if row else None

    def keys_version(self) -> int:
        return VERSION_UNKNOWN

    # --- data plane ----------------------------------------------------------------
    def write_events(self, events: list[RequestEvent]) -> None:
        if not events:
            return
        rows = [_pg_row(event) for event in events]
        with self._events() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_EVENT_ORDER_LOCK_ID,))
            # psycopg pipelines executemany: one network round trip for the whole batch.
            cursor.executemany(_INSERT_EVENT, rows)

    def iter_events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        account: str | None = None,
    ) -> Iterator[RequestEvent]:
        query, args = select_events("%s", since=since, until=until, account=account)
        # Own connection and a server-side cursor: rows stream in chunks, and a slow
        # consumer holds no lock that the gateway needs.
        with psycopg.connect(self._dsn) as conn, conn.cursor(name="distillguard_events") as cur:
            cur.itersize = _ITER_CHUNK
            cur.execute(query, args)
            for row in cur:
                yield row_to_event(row)

    def events_after(self, after_id: int, limit: int) -> list[tuple[int, RequestEvent]]:
        with self._tail() as conn:
            rows = conn.execute(select_events_after("%s"), (after_id, limit)).fetchall()
        return [(row[0], row_to_event(row[1:])) for row in rows]

    def last_event_id(self) -> int:
        with self._tail() as conn:
            row = conn.execute(LAST_ID).fetchone()
        assert row is not None
        return int(row[0])

    def first_event_id_since(self, ts: float) -> int:
        with self._tail() as conn:
            row = conn.execute(FIRST_ID_SINCE.format(p="%s"), (ts,)).fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_event_id() + 1

    def count_events(self) -> int:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM request_events").fetchone()
        assert row is not None
        return int(row[0])

    def recent_events(self, account: str, limit: int) -> list[RequestEvent]:
        query, args = recent_events_sql("%s", account, limit)
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            return [row_to_event(r) for r in conn.execute(query, args).fetchall()]

    def event_histogram(self, *, since: float, until: float, bucket_s: float,
                        account: str | None = None) -> list[tuple[int, int, int]]:
        query, args = histogram_sql("%s", since=since, until=until, bucket_s=bucket_s,
                                    account=account, floor="CAST(FLOOR({}) AS INTEGER)")
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            rows = conn.execute(query, args).fetchall()
        return [(int(b), int(n), int(a)) for b, n, a in rows]

    def close(self) -> None:
        self._control.close()
        self._events.close()
        self._tail.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "PostgresStore(dsn=**********)"
