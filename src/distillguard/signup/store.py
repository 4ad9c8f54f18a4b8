"""``SignupStore``: sign-up requests and their screening decisions, emailed tokens, used
puzzles, per-account sign-up evidence and the circuit breaker's state.

Backends follow ``settings.store`` like the other stores: ``sqlite`` (``signup.db`` in
the data folder) or ``postgres`` (tables ``signup_*`` in the connection's schema). Both
run the same SQL but for the parameter marker.

Rows are written only for attempts that carried a valid proof of work (or a served
no-JS wait ticket), so unauthenticated traffic cannot grow these tables for free.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillguard.config import SettingsError
from distillguard.datadir import private_dir, private_file

if TYPE_CHECKING:
    from distillguard.config import Settings

SIGNUP_FILE = "signup.db"

_REQUEST_COLUMNS = ("id, ts, email, normalised, domain, prefix, fingerprint, decision, "
                    "reason, level, state, account, decided_by, decided_at")
_EVIDENCE_COLUMNS = ("account, email, normalised, domain, prefix, fingerprint, "
                     "signed_up_at, waitlist, request_id")
# Columns that velocity may count by (never interpolate anything else into SQL).
VELOCITY_COLUMNS = ("prefix", "domain", "fingerprint", "normalised")

_TABLES = """
CREATE TABLE IF NOT EXISTS signup_requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, email TEXT NOT NULL, normalised TEXT NOT NULL,
    domain TEXT NOT NULL, prefix TEXT NOT NULL, fingerprint TEXT NOT NULL,
    decision TEXT NOT NULL, reason TEXT NOT NULL, level INTEGER NOT NULL,
    state TEXT NOT NULL, account TEXT, decided_by TEXT, decided_at REAL);
CREATE INDEX IF NOT EXISTS signup_requests_ts ON signup_requests(ts);
CREATE INDEX IF NOT EXISTS signup_requests_prefix ON signup_requests(prefix, ts);
CREATE INDEX IF NOT EXISTS signup_requests_domain ON signup_requests(domain, ts);
CREATE INDEX IF NOT EXISTS signup_requests_fp ON signup_requests(fingerprint, ts);
CREATE INDEX IF NOT EXISTS signup_requests_norm ON signup_requests(normalised, ts);
CREATE INDEX IF NOT EXISTS signup_requests_state ON signup_requests(state, ts);
CREATE TABLE IF NOT EXISTS signup_tokens (
    token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, request_id TEXT, account TEXT,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL);
CREATE INDEX IF NOT EXISTS signup_tokens_account ON signup_tokens(account, kind, created_at);
CREATE TABLE IF NOT EXISTS signup_pow_used (
    digest TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS signup_accounts (
    account TEXT PRIMARY KEY, email TEXT NOT NULL, normalised TEXT NOT NULL,
    domain TEXT NOT NULL, prefix TEXT NOT NULL, fingerprint TEXT NOT NULL,
    signed_up_at REAL NOT NULL, waitlist TEXT NOT NULL, request_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signup_state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclasses.dataclass
class SignupRequest:
    """One screened sign-up attempt and where it stands.

    ``decision`` is the screening outcome (``accepted``, ``rejected``, ``existing``);
    ``reason`` says why in words. ``state`` follows the request: ``mailed`` (link sent),
    ``refused``, ``waitlisted`` (address confirmed, waiting for an admin), ``approved``,
    ``denied``, ``created`` (key shown).
    """

    id: str
    ts: float
    email: str
    normalised: str
    domain: str
    prefix: str
    fingerprint: str
    decision: str
    reason: str
    level: int
    state: str
    account: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SignupEvidence:
    """What sign-up knew about an account, for campaign detection: accounts that share a
    domain, an address prefix or a fingerprint, or that signed up in one burst."""

    account: str
    email: str
    normalised: str
    domain: str
    prefix: str
    fingerprint: str
    signed_up_at: float
    waitlist: str  # "none", or "approved by NAME"
    request_id: str

    @property
    def ts(self) -> float:
        """The sign-up time, under the name detection's sign-up links read."""
        return self.signed_up_at

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Token:
    """A consumed emailed token: what it was for."""

    kind: str
    request_id: str | None
    account: str | None
    created_at: float


class SignupStore(abc.ABC):
    """The sign-up tables behind one lock; subclasses open the connection."""

    name = "base"
    _marker = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    # --- plumbing --------------------------------------------------------------------
    @abc.abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        """A connection (or cursor) inside one transaction, committed on exit."""

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._marker)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._tx() as db:
            return db.execute(self._sql(sql), args).fetchall()

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        # fetchall, not fetchone: it finishes the statement (UPDATE ... RETURNING commits
        # only then in SQLite's autocommit mode).
        with self._tx() as db:
            rows = db.execute(self._sql(sql), args).fetchall()
        return rows[0] if rows else None

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._tx() as db:
            return db.execute(self._sql(sql), args).rowcount

    # --- requests --------------------------------------------------------------------
    def add_request(self, req: SignupRequest) -> None:
        """Record a screened attempt."""
        self._run(f"INSERT INTO signup_requests ({_REQUEST_COLUMNS}) VALUES "
                  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  tuple(dataclasses.astuple(req)))

    def set_state(self, request_id: str, state: str, *, account: str | None = None,
                  decided_by: str | None = None, decided_at: float | None = None,
                  only_from: str | None = None) -> bool:
        """Move a request to ``state`` (only from ``only_from`` when given); whether it moved."""
        sql = ("UPDATE signup_requests SET state = ?, account = COALESCE(?, account), "
               "decided_by = COALESCE(?, decided_by), decided_at = COALESCE(?, decided_at) "
               "WHERE id = ?")
        args: tuple[Any, ...] = (state, account, decided_by, decided_at, request_id)
        if only_from is not None:
            sql += " AND state = ?"
            args += (only_from,)
        return self._run(sql, args) > 0

    def get_request(self, request_id: str) -> SignupRequest | None:
        row = self._one(f"SELECT {_REQUEST_COLUMNS} FROM signup_requests WHERE id = ?",
                        (request_id,))
        return SignupRequest(*row) if row else None

    def requests(self, *, state: str | None = None, decision: str | None = None,
                 limit: int = 100) -> list[SignupRequest]:
        """Requests, newest first, optionally in one state or with one decision."""
        sql = f"SELECT {_REQUEST_COLUMNS} FROM signup_requests WHERE 1 = 1"
        args: tuple[Any, ...] = ()
        if state is not None:
            sql += " AND state = ?"
            args += (state,)
        if decision is not None:
            sql += " AND decision = ?"
            args += (decision,)
        rows = self._all(sql + " ORDER BY ts DESC, id DESC LIMIT ?", (*args, limit))
        return [SignupRequest(*r) for r in rows]

    def count(self, since: float, until: float | None = None, *, column: str | None = None,
              value: str | None = None) -> int:
        """Attempts with ``since <= ts < until``, optionally only those whose ``column``
        (one of ``VELOCITY_COLUMNS``) equals ``value``."""
        sql = "SELECT COUNT(*) FROM signup_requests WHERE ts >= ?"
        args: tuple[Any, ...] = (since,)
        if until is not None:
            sql += " AND ts < ?"
            args += (until,)
        if column is not None:
            if column not in VELOCITY_COLUMNS:
                raise ValueError(f"cannot count sign-ups by {column!r}")
            sql += f" AND {column} = ?"
            args += (value,)
        return int(self._one(sql, args)[0])

    def funnel(self, since: float, refusal_kinds: tuple[tuple[str, str], ...] = ()
               ) -> dict[str, Any]:
        """How far the sign-up requests made since ``since`` got, in one pass over them:
        ``requests`` (attempts with a valid puzzle), ``screened_out`` and
        ``screened_out_by_reason`` (by the first of ``refusal_kinds``, (kind, LIKE
        pattern of the reason), that matches; ``other`` if none), ``existing`` (the
        address had an account), ``accepted``, ``verification_mailed``, ``waitlisted``
        (ever: waiting, approved or denied), ``approved``, ``denied``, ``keys_issued``.
        Puzzle challenges are not counted: they are stateless and leave no row."""
        total = ("SELECT COUNT(*), {} FROM signup_requests WHERE ts >= ?".format(", ".join(
            f"COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)" for cond in (
                "decision = 'rejected'", "decision = 'existing'", "decision = 'accepted'",
                "state = 'waitlisted' OR decided_by IS NOT NULL", "state = 'approved' OR "
                "(state = 'created' AND decided_by IS NOT NULL)", "state = 'denied'",
                "state = 'created'"))))
        row = self._one(total, (since,))
        case = " ".join("WHEN reason LIKE ? THEN ?" for _ in refusal_kinds)
        case = f"CASE {case} ELSE 'other' END" if refusal_kinds else "'other'"
        kinds = self._all(f"SELECT {case} AS kind, COUNT(*) FROM signup_requests WHERE "
                          "ts >= ? AND decision = 'rejected' GROUP BY kind ORDER BY 2 DESC",
                          (*(x for k, p in refusal_kinds for x in (p, k)), since))
        # A verification link is mailed when the request is accepted (never in open
        # mode); approval mails a link of kind "key", counted as approved.
        mailed = self._one("SELECT COUNT(*) FROM signup_tokens WHERE kind = 'verify' AND "
                           "created_at >= ?", (since,))
        n = [int(v) for v in row]
        return {"since": since, "requests": n[0], "screened_out": n[1],
                "screened_out_by_reason": {str(k): int(c) for k, c in kinds},
                "existing": n[2], "accepted": n[3], "verification_mailed": int(mailed[0]),
                "waitlisted": n[4], "approved": n[5], "denied": n[6], "keys_issued": n[7]}

    # --- tokens ----------------------------------------------------------------------
    def add_token(self, token_hash: str, kind: str, *, request_id: str | None,
                  account: str | None, created_at: float, expires_at: float) -> None:
        self._run("INSERT INTO signup_tokens (token_hash, kind, request_id, account, "
                  "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (token_hash, kind, request_id, account, created_at, expires_at))

    def consume_token(self, token_hash: str, kinds: tuple[str, ...], now: float
                      ) -> Token | None:
        """Mark an unexpired, unused token of one of ``kinds`` used, atomically; what it
        was for, or None (unknown, expired, used or of another kind)."""
        marks = ", ".join("?" for _ in kinds)
        row = self._one(
            "UPDATE signup_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
            f"AND expires_at > ? AND kind IN ({marks}) "
            "RETURNING kind, request_id, account, created_at",
            (now, token_hash, now, *kinds))
        return Token(*row) if row else None

    def last_token_at(self, kind: str, account: str) -> float | None:
        row = self._one("SELECT MAX(created_at) FROM signup_tokens WHERE account = ? "
                        "AND kind = ?", (account, kind))
        return row[0] if row else None

    def prune(self, now: float) -> None:
        """Drop expired tokens and used-puzzle records (they can no longer matter)."""
        self._run("DELETE FROM signup_tokens WHERE expires_at < ?", (now - 86_400.0,))
        self._run("DELETE FROM signup_pow_used WHERE expires_at < ?", (now,))

    def use_puzzle(self, digest: str, expires_at: float) -> bool:
        """Record a solved puzzle; False when it was used before (a replay)."""
        try:
            return self._run("INSERT INTO signup_pow_used (digest, expires_at) VALUES (?, ?) "
                             "ON CONFLICT (digest) DO NOTHING", (digest, expires_at)) > 0
        except sqlite3.IntegrityError:
            return False

    # --- evidence --------------------------------------------------------------------
    def add_evidence(self, ev: SignupEvidence) -> bool:
        """Record the account's sign-up; False when the account already has a record."""
        return self._run(f"INSERT INTO signup_accounts ({_EVIDENCE_COLUMNS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO NOTHING",
                         tuple(dataclasses.astuple(ev))) > 0

    def evidence(self, account: str) -> SignupEvidence | None:
        row = self._one(f"SELECT {_EVIDENCE_COLUMNS} FROM signup_accounts WHERE account = ?",
                        (account,))
        return SignupEvidence(*row) if row else None

    def all_evidence(self, since: float = 0.0) -> list[SignupEvidence]:
        rows = self._all(f"SELECT {_EVIDENCE_COLUMNS} FROM signup_accounts "
                         "WHERE signed_up_at >= ? ORDER BY signed_up_at", (since,))
        return [SignupEvidence(*r) for r in rows]

    # --- small state -----------------------------------------------------------------
    def get_state(self, name: str) -> str | None:
        row = self._one("SELECT value FROM signup_state WHERE name = ?", (name,))
        return row[0] if row else None

    def put_state(self, name: str, value: str) -> None:
        self._run("INSERT INTO signup_state (name, value) VALUES (?, ?) ON CONFLICT (name) "
                  "DO UPDATE SET value = excluded.value", (name, value))

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""


class SQLiteSignupStore(SignupStore):
    """``signup.db`` in the data folder (WAL)."""

    name = "sqlite"

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        # Owner-only like the other state files: it holds email addresses.
        path = private_dir(directory)
        self._db = sqlite3.connect(private_file(path / SIGNUP_FILE), check_same_thread=False,
                                   isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_TABLES)

    @classmethod
    def from_settings(cls, settings: Settings) -> SQLiteSignupStore:
        return cls(settings.data_path)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:  # never under a query running in another thread
            self._db.close()


class PostgresSignupStore(SignupStore):
    """The sign-up tables in PostgreSQL, shared by several gateway processes."""

    name = "postgres"
    _marker = "%s"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)
        ddl = (_TABLES.replace(" REAL", " double precision")
               .replace("INTEGER", "bigint").replace("TEXT", "text"))
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x7369676E,))  # "sign"
            for statement in filter(str.strip, ddl.split(";")):
                self._conn.execute(statement)

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSignupStore:
        if not settings.postgres_dsn:
            raise SettingsError("setting 'postgres_dsn' is required when store = postgres")
        return cls(settings.postgres_dsn.reveal())

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction():
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_signup_store(settings: Settings) -> SignupStore:
    """The sign-up store of the store bundle that ``settings.store`` names."""
    from distillguard.telemetry.store import store_bundle

    return store_bundle(settings).open_signup(settings)
