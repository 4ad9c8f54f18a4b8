"""``ActionStore``: current actions per account and the audit log of every change.

Backends: ``sqlite`` (``policy.db`` in ``settings.data_path``) and ``postgres`` (at
``settings.postgres_dsn``, tables ``policy_actions`` and ``policy_audit`` in the
connection's schema), picked by ``settings.store`` like the event store.

``version()`` tells the engine's cache whether actions changed in any process: SQLite
answers ``PRAGMA data_version`` of a connection that never writes (changes when any
other connection commits to policy.db); PostgreSQL answers ``VERSION_UNKNOWN`` and the
engine re-reads at most every ``policy_cache_ttl`` seconds.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from distillguard.config import SettingsError
from distillguard.datadir import private_dir, private_file
from distillguard.policy.actions import Action
from distillguard.telemetry.store import VERSION_UNKNOWN

if TYPE_CHECKING:
    from distillguard.config import Settings

POLICY_FILE = "policy.db"
_ACTION_COLUMNS = "account, kind, reason, author, created_at, expires_at, rate_factor"


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One audited step: ``op`` is ``set`` or ``lift`` (an action changed) or a step
    that changes no action, such as ``signup_accepted`` or ``step_up_mailed``."""

    id: int
    ts: float
    account: str
    op: str
    kind: str | None
    reason: str
    author: str
    expires_at: float | None
    rate_factor: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class ActionStore(Protocol):
    """Current actions (one per account) and their audit log; safe across threads."""

    name: str

    def set_action(self, action: Action) -> None:
        """Make ``action`` the account's action (replacing any) and audit it, atomically."""
        ...

    def lift(self, account: str, *, author: str, reason: str) -> Action | None:
        """Remove the account's action and audit it; the lifted action, or None if none."""
        ...

    def note(self, account: str, op: str, *, reason: str, author: str) -> None:
        """Append an audit entry that changes no action (a sign-up or step-up step)."""
        ...

    def get(self, account: str) -> Action | None:
        """The account's stored action (possibly expired), or None."""
        ...

    def actions(self) -> list[Action]:
        """Every stored action (expired ones included; callers check ``active``)."""
        ...

    def audit(self, *, account: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, newest first; only ``account``'s when given."""
        ...

    def version(self) -> int:
        """Changes whenever actions change in any process; ``VERSION_UNKNOWN`` if unknown."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _action(row: Any) -> Action:
    return Action(*row)


class _Reads:
    """The read queries of both stores: the same SQL but for the parameter marker."""

    _marker = "?"
    _lock: threading.Lock

    _reader: Callable[[], Any]  # each store's connection for reads

    def _fetch(self, sql: str, args: tuple[Any, ...], *, one: bool = False) -> Any:
        with self._lock:
            cursor = self._reader().execute(sql.replace("?", self._marker), args)
            return cursor.fetchone() if one else cursor.fetchall()

    def get(self, account: str) -> Action | None:
        row = self._fetch(f"SELECT {_ACTION_COLUMNS} FROM policy_actions WHERE account = ?",
                          (account,), one=True)
        return _action(row) if row else None

    def actions(self) -> list[Action]:
        rows = self._fetch(f"SELECT {_ACTION_COLUMNS} FROM policy_actions "
                           "ORDER BY created_at", ())
        return [_action(r) for r in rows]

    def audit(self, *, account: str | None = None, limit: int = 100) -> list[AuditEntry]:
        sql = ("SELECT id, ts, account, op, kind, reason, author, expires_at, rate_factor "
               "FROM policy_audit")
        args: tuple[Any, ...] = ()
        if account is not None:
            sql += " WHERE account = ?"
            args = (account,)
        rows = self._fetch(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditEntry(*r) for r in rows]


class SQLiteActionStore(_Reads):
    """Actions in ``policy.db`` under the data folder (WAL, synchronous=FULL)."""

    name = "sqlite"

    def __init__(self, directory: str | Path) -> None:
        path = private_dir(directory)
        self._db = self._connect(private_file(path / POLICY_FILE))
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS policy_actions (
                account TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL,
                author TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
                rate_factor REAL);
            CREATE TABLE IF NOT EXISTS policy_audit (
                id INTEGER PRIMARY KEY, ts REAL NOT NULL, account TEXT NOT NULL,
                op TEXT NOT NULL, kind TEXT, reason TEXT NOT NULL, author TEXT NOT NULL,
                expires_at REAL, rate_factor REAL);
            CREATE INDEX IF NOT EXISTS policy_audit_account ON policy_audit(account, id);
        """)
        self._lock = threading.Lock()
        # Never written through: its data_version moves on every commit by _db.
        self._version = self._connect(path / POLICY_FILE)
        self._version_lock = threading.Lock()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                               timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def from_settings(cls, settings: Settings) -> SQLiteActionStore:
        return cls(settings.data_path)

    def set_action(self, action: Action) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    f"INSERT OR REPLACE INTO policy_actions ({_ACTION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (action.account, action.kind, action.reason, action.author,
                     action.created_at, action.expires_at, action.rate_factor))
                self._db.execute(
                    "INSERT INTO policy_audit (ts, account, op, kind, reason, author, "
                    "expires_at, rate_factor) VALUES (?, ?, 'set', ?, ?, ?, ?, ?)",
                    (action.created_at, action.account, action.kind, action.reason,
                     action.author, action.expires_at, action.rate_factor))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def lift(self, account: str, *, author: str, reason: str) -> Action | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"SELECT {_ACTION_COLUMNS} FROM policy_actions "
                                       "WHERE account = ?", (account,)).fetchone()
                if row is None:
                    self._db.execute("ROLLBACK")
                    return None
                self._db.execute("DELETE FROM policy_actions WHERE account = ?", (account,))
                lifted = _action(row)
                self._db.execute(
                    "INSERT INTO policy_audit (ts, account, op, kind, reason, author) "
                    "VALUES (?, ?, 'lift', ?, ?, ?)",
                    (time.time(), account, lifted.kind, reason, author))
                self._db.execute("COMMIT")
                return lifted
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def note(self, account: str, op: str, *, reason: str, author: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO policy_audit (ts, account, op, reason, author) "
                             "VALUES (?, ?, ?, ?, ?)", (time.time(), account, op, reason,
                                                        author))

    def _reader(self) -> Any:
        return self._db

    def version(self) -> int:
        with self._version_lock:
            return int(self._version.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        # Under the lock: a detection round still running in a thread at shutdown must
        # finish its write first (closing under it crashes the sqlite3 module).
        with self._lock:
            self._db.close()
        with self._version_lock:
            self._version.close()


class PostgresActionStore(_Reads):
    """Actions in PostgreSQL, for several gateway processes or machines."""

    _marker = "%s"

    name = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)
        self._lock = threading.Lock()
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x706F6C69,))
            self._conn.execute("""
                CREATE TABLE IF NOT EXISTS policy_actions (
                    account text PRIMARY KEY, kind text NOT NULL, reason text NOT NULL,
                    author text NOT NULL, created_at double precision NOT NULL,
                    expires_at double precision, rate_factor double precision)""")
            self._conn.execute("""
                CREATE TABLE IF NOT EXISTS policy_audit (
                    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    ts double precision NOT NULL, account text NOT NULL, op text NOT NULL,
                    kind text, reason text NOT NULL, author text NOT NULL,
                    expires_at double precision, rate_factor double precision)""")
            self._conn.execute("CREATE INDEX IF NOT EXISTS policy_audit_account "
                               "ON policy_audit(account, id)")

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresActionStore:
        if not settings.postgres_dsn:
            raise SettingsError("setting 'postgres_dsn' is required when store = postgres")
        return cls(settings.postgres_dsn.reveal())

    def set_action(self, action: Action) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute(
                f"INSERT INTO policy_actions ({_ACTION_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account) DO UPDATE SET "
                "kind = EXCLUDED.kind, reason = EXCLUDED.reason, author = EXCLUDED.author, "
                "created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, "
                "rate_factor = EXCLUDED.rate_factor",
                (action.account, action.kind, action.reason, action.author,
                 action.created_at, action.expires_at, action.rate_factor))
            self._conn.execute(
                "INSERT INTO policy_audit (ts, account, op, kind, reason, author, "
                "expires_at, rate_factor) VALUES (%s, %s, 'set', %s, %s, %s, %s, %s)",
                (action.created_at, action.account, action.kind, action.reason,
                 action.author, action.expires_at, action.rate_factor))

    def lift(self, account: str, *, author: str, reason: str) -> Action | None:
        with self._lock, self._conn.transaction():
            row = self._conn.execute(f"DELETE FROM policy_actions WHERE account = %s "
                                     f"RETURNING {_ACTION_COLUMNS}", (account,)).fetchone()
            if row is None:
                return None
            lifted = _action(row)
            self._conn.execute(
                "INSERT INTO policy_audit (ts, account, op, kind, reason, author) "
                "VALUES (%s, %s, 'lift', %s, %s, %s)",
                (time.time(), account, lifted.kind, reason, author))
            return lifted

    def note(self, account: str, op: str, *, reason: str, author: str) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO policy_audit (ts, account, op, reason, author) "
                               "VALUES (%s, %s, %s, %s, %s)", (time.time(), account, op,
                                                               reason, author))

    def _reader(self) -> Any:
        return self._conn

    def version(self) -> int:
        return VERSION_UNKNOWN

    def close(self) -> None:
        self._conn.close()


def open_action_store(settings: Settings) -> ActionStore:
    """The action store of the store bundle that ``settings.store`` names."""
    from distillguard.telemetry.store import store_bundle

    return store_bundle(settings).open_actions(settings)
