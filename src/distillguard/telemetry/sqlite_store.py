"""SQLite store: the embedded default, two database files under the data folder.

``control.db`` holds accounts and keys, ``events.db`` holds request events. They are
separate files so that ``keys_version()`` can use ``PRAGMA data_version`` on control.db:
that number changes only when another connection commits to *that* file, so the stream
of event writes (many per second) never invalidates the gateway's key cache, while a
revocation by the CLI in another process does, on the very next request, without a
query per request.

Both files run in WAL mode: readers never block the writer and the writer never blocks
readers. ``events.db`` uses ``synchronous=NORMAL``: a committed batch survives the
process dying (SIGKILL, a crash) because it is in the WAL in the OS's hands, but the
last batches before a power cut or kernel crash may roll back, since the WAL is fsynced
only at checkpoints. That is the usual trade for a log of telemetry. ``control.db``
uses ``synchronous=FULL``: a revocation must not come undone after a power cut, and key
changes are rare enough that the extra fsync costs nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillguard.datadir import private_dir, private_file
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
    KEY_COLUMNS,
    LAST_ID,
    event_to_row,
    histogram_sql,
    recent_events_sql,
    row_to_event,
    select_events,
    select_events_after,
)

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.telemetry.events import RequestEvent

CONTROL_FILE = "control.db"
EVENTS_FILE = "events.db"
# How long a statement waits for another process's write lock before "database is locked".
BUSY_TIMEOUT_MS = 5000
_ITER_CHUNK = 1000

_CONTROL_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    account     TEXT NOT NULL REFERENCES accounts(name),
    prefix      TEXT NOT NULL,
    name        TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account);
"""

_EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS request_events (
    id                INTEGER PRIMARY KEY,
    ts                REAL NOT NULL,
    request_id        TEXT NOT NULL UNIQUE,
    endpoint          TEXT NOT NULL,
    status            INTEGER NOT NULL,
    latency_ms        REAL NOT NULL,
    account           TEXT,
    key_id            TEXT,
    client_addr       TEXT,
    user_agent        TEXT,
    model             TEXT,
    params            TEXT NOT NULL,
    prompt            TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    stream            INTEGER NOT NULL,
    error_type        TEXT,
    error_code        TEXT,
    watermark         TEXT,
    features          TEXT
);
CREATE INDEX IF NOT EXISTS request_events_ts ON request_events(ts);
CREATE INDEX IF NOT EXISTS request_events_account_ts ON request_events(account, ts);
"""

_INSERT_EVENT = (
    f"INSERT INTO request_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in EVENT_COLUMNS)}) ON CONFLICT(request_id) DO NOTHING"
)



class SQLiteStore:
    """Accounts, keys and events in two SQLite files in ``directory``."""

    name = "sqlite"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        # Owner-only, also when it already exists: events.db holds prompts.
        private_dir(self.directory)
        self._control_path = self.directory / CONTROL_FILE
        self._events_path = self.directory / EVENTS_FILE
        # One connection per role, each behind its own lock (sqlite3 connections must not
        # be used by two threads at once). The version connection is never written
        # through, so every commit to control.db, ours included, counts as "another
        # connection" for its data_version.
        self._control = self._connect(self._control_path, "FULL")
        self._control.executescript(_CONTROL_SCHEMA)
        self._control_lock = threading.Lock()
        self._version_conn = self._connect(self._control_path, "FULL")
        self._version_lock = threading.Lock()
        # Bulk reads (every key, every account: detection's round, the admin lists) get a
        # connection of their own, so a 100k-key scan never holds the lock that each
        # request's key check takes.
        self._bulk_conn = self._connect(self._control_path, "FULL")
        self._bulk_lock = threading.Lock()
        self._events = self._connect(self._events_path, "NORMAL")
        self._events.executescript(_EVENTS_SCHEMA)
        columns = {r[1] for r in self._events.execute("PRAGMA table_info(request_events)")}
        if "features" not in columns:  # a store made before prompt features existed
            self._events.execute("ALTER TABLE request_events ADD COLUMN features TEXT")
        self._events_lock = threading.Lock()
        self._tail: sqlite3.Connection | None = None  # detection's reader, made on first use
        self._tail_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SQLiteStore:
        """The store in ``settings.data_path``."""
        return cls(settings.data_path)

    @staticmethod
    def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes open them explicitly.
        conn = sqlite3.connect(
            private_file(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    # --- control plane -------------------------------------------------------------
    def _ensure_account_locked(self, name: str) -> None:
        self._control.execute(
            "INSERT INTO accounts (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
            (name, time.time()),
        )

    def ensure_account(self, account: str) -> Account:
        name = check_account_name(account)
        with self._control_lock:
            self._control.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_account_locked(name)
                self._control.execute("COMMIT")
            except BaseException:
                self._control.execute("ROLLBACK")
                raise
        found = self.get_account(name)
        assert found is not None
        return found

    def get_account(self, account: str) -> Account | None:
        with self._version_lock:
            row = self._version_conn.execute(
                "SELECT name, created_at FROM accounts WHERE name = ?", (account,)
            ).fetchone()
        return Account(*row) if row else None

    def list_accounts(self) -> list[Account]:
        with self._bulk_lock:
            rows = self._bulk_conn.execute(
                "SELECT name, created_at FROM accounts ORDER BY created_at, name"
            ).fetchall()
        return [Account(*row) for row in rows]

    def create_key(self, account: str, *, name: str | None = None) -> tuple[KeyRecord, str]:
        owner = check_account_name(account)
        new = generate_key()
        record = KeyRecord(new.key_id, owner, new.prefix, time.time(), None, name)
        with self._control_lock:
            self._control.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_account_locked(owner)
                self._control.execute(
                    "INSERT INTO api_keys (key_id, key_hash, account, prefix, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (record.key_id, new.key_hash, owner, record.prefix, name, record.created_at),
                )
                self._control.execute("COMMIT")
            except BaseException:
                self._control.execute("ROLLBACK")
                raise
        return record, new.plaintext

    def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        query = f"SELECT {KEY_COLUMNS} FROM api_keys"
        args: tuple[Any, ...] = ()
        if account is not None:
            query += " WHERE account = ?"
            args = (account,)
        with self._bulk_lock:
            rows = self._bulk_conn.execute(query + " ORDER BY created_at, key_id", args)
            return [KeyRecord(*row) for row in rows.fetchall()]

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._version_lock:
            row = self._version_conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        return KeyRecord(*row) if row else None

    def revoke_key(self, key_id: str) -> bool:
        with self._control_lock:
            cursor = self._control.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (time.time(), key_id),
            )
            return cursor.rowcount > 0

    def lookup_key(self, plaintext: str) -> KeyRecord | None:
        with self._version_lock:
            row = self._version_conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (hash_key(plaintext),)
            ).fetchone()
        return KeyRecord(*row) if row else None

    def keys_version(self) -> int:
        # data_version reads a counter in the WAL index (shared memory): no disk access,
        # a few microseconds, so the gateway may call it on every request.
        with self._version_lock:
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    # --- data plane ----------------------------------------------------------------
    def write_events(self, events: list[RequestEvent]) -> None:
        if not events:
            return
        rows = [event_to_row(event) for event in events]
        with self._events_lock:
            self._events.execute("BEGIN IMMEDIATE")
            try:
                self._events.executemany(_INSERT_EVENT, rows)
                self._events.execute("COMMIT")
            except BaseException:
                if self._events.in_transaction:
                    self._events.execute("ROLLBACK")
                raise

    def iter_events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        account: str | None = None,
    ) -> Iterator[RequestEvent]:
        query, args = select_events("?", since=since, until=until, account=account)
        # A connection of its own: a slow consumer (an export) must not hold the lock
        # that other readers need, and WAL gives it a consistent snapshot meanwhile.
        # check_same_thread=False: the consumer may resume the generator from any thread.
        conn = sqlite3.connect(
            self._events_path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        try:
            cursor = conn.execute(query, args)
            while chunk := cursor.fetchmany(_ITER_CHUNK):
                for row in chunk:
                    yield row_to_event(row)
        finally:
            conn.close()

    def count_events(self) -> int:
        # Counting scans the table; on its own connection it never holds up the writer.
        conn = sqlite3.connect(self._events_path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            return int(conn.execute("SELECT count(*) FROM request_events").fetchone()[0])
        finally:
            conn.close()

    def _read_conn(self) -> sqlite3.Connection:
        # A reader connection of its own: the tailer never takes the writer's lock, and
        # WAL lets its reads run while a batch commits.
        if self._tail is None:
            self._tail = sqlite3.connect(
                self._events_path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        return self._tail

    def events_after(self, after_id: int, limit: int) -> list[tuple[int, RequestEvent]]:
        # rowid ids grow in commit order: BEGIN IMMEDIATE makes writers take turns, and an
        # INTEGER PRIMARY KEY is max(id) + 1 at insert time.
        with self._tail_lock:
            rows = self._read_conn().execute(select_events_after("?"),
                                             (after_id, limit)).fetchall()
        return [(row[0], row_to_event(row[1:])) for row in rows]

    def last_event_id(self) -> int:
        with self._tail_lock:
            return int(self._read_conn().execute(LAST_ID).fetchone()[0])

    def first_event_id_since(self, ts: float) -> int:
        with self._tail_lock:
            row = self._read_conn().execute(FIRST_ID_SINCE.format(p="?"), (ts,)).fetchone()
        return int(row[0]) if row[0] is not None else self.last_event_id() + 1

    def recent_events(self, account: str, limit: int) -> list[RequestEvent]:
        query, args = recent_events_sql("?", account, limit)
        return [row_to_event(r) for r in self._read(query, args)]

    def event_histogram(self, *, since: float, until: float, bucket_s: float,
                        account: str | None = None) -> list[tuple[int, int, int]]:
        query, args = histogram_sql("?", since=since, until=until, bucket_s=bucket_s,
                                    account=account, floor="CAST({} AS INTEGER)")
        return [(int(b), int(n), int(a)) for b, n, a in self._read(query, args)]

    def _read(self, query: str, args: list[Any]) -> list[Any]:
        # Its own connection, as iter_events: an analyst's page never waits on the writer.
        conn = sqlite3.connect(self._events_path, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        with self._tail_lock:
            if self._tail is not None:
                self._tail.close()
        for lock, conn in (
            (self._control_lock, self._control),
            (self._version_lock, self._version_conn),
            (self._bulk_lock, self._bulk_conn),
            (self._events_lock, self._events),
        ):
            with lock:
                conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.directory)!r})"
