"""Detection state saved with its position in the event log, so a restart resumes.

What is saved is the pipeline's whole state object (every attribute that is not
configuration, a model or a lock; see ``STATE_EXCLUDED``), not a list of fields: a signal
or a state attribute added to ``DetectionPipeline`` is checkpointed without a change here.
The blob is a pickle inside a versioned envelope: ``FORMAT`` (this module's layout), the
names of the pipeline's signals (per-account states are lists parallel to them) and the
log position the state includes. A checkpoint whose format or signal list differs from
the running pipeline's is not restored: detection then warms up from the log instead,
and says so in the log.

Unpickling runs only through ``_Restricted``, which resolves classes from distillguard,
numpy and a few standard containers and nothing else, so a tampered checkpoint row
cannot name an arbitrary callable.

Where checkpoints live: ``CheckpointStore`` over SQLite (``detection.db`` in the data
folder) or PostgreSQL (table ``detection_checkpoints``), by ``settings.store``. A row is
keyed by the consumer's name (``inprocess``, ``partition-3``); writing it replaces state
and position together in one statement, so they never disagree.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.pipeline import DetectionPipeline

log = logging.getLogger(__name__)

FORMAT = 1
_SCHEMA_LOCK_ID = 0x64676370  # "dgcp"
CHECKPOINT_FILE = "detection.db"
# Attributes of DetectionPipeline that are configuration, models, locks or caches that a
# restart rebuilds; everything else is state and is checkpointed.
STATE_EXCLUDED = frozenset({
    "settings", "signals", "embedder", "topic_map", "elicitation", "store", "clock",
    "_lock", "_info", "min_events", "baseline_min_events", "max_accounts",
    "baseline_min_accounts", "priors", "signup_evidence", "sketch", "_sample_cut", "_observers",
    "space", "_key_made", "_output_i",
})
_ALLOWED_MODULES = ("distillguard.", "numpy", "collections", "copyreg", "datetime")
_ALLOWED_BUILTINS = frozenset({"set", "frozenset", "dict", "list", "tuple", "bytearray",
                               "complex", "slice", "range", "bytes", "int", "float", "str",
                               "bool", "object"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into this pipeline (the reason says why)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One saved state: its consumer name, log position, save time and the blob."""

    name: str
    position: int
    saved_at: float
    blob: bytes


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if module.startswith(_ALLOWED_MODULES) or module in ("numpy", "collections"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint names {module}.{name}, which is not allowed")


def pipeline_state(pipeline: DetectionPipeline) -> dict[str, Any]:
    """The pipeline's state attributes (everything not in ``STATE_EXCLUDED``)."""
    return {k: v for k, v in vars(pipeline).items() if k not in STATE_EXCLUDED}


def dump_state(pipeline: DetectionPipeline, position: int) -> bytes:
    """The pipeline's state and log position as one versioned, compressed blob.

    Call with the pipeline's lock held (or while nothing observes): the pickle must see
    one consistent state.
    """
    envelope = {"format": FORMAT, "signals": [s.name for s in pipeline.signals],
                "position": position, "state": pipeline_state(pipeline)}
    return zlib.compress(pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL), 1)


def load_state(blob: bytes, pipeline: DetectionPipeline | None = None) -> tuple[int, dict]:
    """(position, state attributes) from a blob; CheckpointError when it does not fit
    ``pipeline`` (another format or another set of signals)."""
    try:
        envelope = _Restricted(io.BytesIO(zlib.decompress(blob))).load()
    except (pickle.UnpicklingError, zlib.error, EOFError, AttributeError, ImportError,
            TypeError, ValueError) as exc:
        raise CheckpointError(f"unreadable checkpoint: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint format {envelope.get('format')!r}, "
                              f"this version reads {FORMAT}")
    if pipeline is not None:
        names = [s.name for s in pipeline.signals]
        if envelope["signals"] != names:
            raise CheckpointError("checkpoint was taken with other signals "
                                  f"({', '.join(envelope['signals'])})")
    return int(envelope["position"]), envelope["state"]


def restore(pipeline: DetectionPipeline, blob: bytes) -> int:
    """Put a checkpoint's state into ``pipeline``; returns its log position."""
    position, state = load_state(blob, pipeline)
    with pipeline._lock:
        for key, value in state.items():
            setattr(pipeline, key, value)
    return position


class CheckpointStore:
    """Checkpoints by consumer name in SQLite or PostgreSQL; safe across threads."""

    def __init__(self, *, sqlite_path: Any = None, postgres_dsn: str | None = None) -> None:
        self._lock = threading.Lock()
        self._pg = postgres_dsn
        if postgres_dsn:
            import psycopg

            self._conn: Any = psycopg.connect(postgres_dsn, autocommit=True)
            with self._conn.transaction():
                # Workers starting at once would race CREATE TABLE IF NOT EXISTS.
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS detection_checkpoints (name text PRIMARY "
                    "KEY, position bigint NOT NULL, saved_at double precision NOT NULL, "
                    "state bytea NOT NULL)")
            self._mark = "%s"
        else:
            # Owner-only like the other state files: the state names accounts.
            from distillguard.datadir import private_dir, private_file

            if str(sqlite_path) != ":memory:":
                private_dir(Path(sqlite_path).parent)
                private_file(sqlite_path)
            self._conn = sqlite3.connect(sqlite_path, timeout=5,
                                         isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS detection_checkpoints (name TEXT PRIMARY KEY, "
                "position INTEGER NOT NULL, saved_at REAL NOT NULL, state BLOB NOT NULL)")
            self._mark = "?"

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointStore:
        """The checkpoint store beside the settings' event store."""
        if settings.store == "postgres":
            return cls(postgres_dsn=settings.postgres_dsn.reveal())
        from distillguard.datadir import private_dir, private_file

        # Owner-only like events.db: account state derives from prompts.
        folder = private_dir(settings.data_path)
        return cls(sqlite_path=private_file(folder / CHECKPOINT_FILE))

    def save(self, name: str, position: int, blob: bytes) -> None:
        """Replace ``name``'s checkpoint (state and position in one statement)."""
        m = self._mark
        with self._lock:
            self._conn.execute(
                f"INSERT INTO detection_checkpoints (name, position, saved_at, state) "
                f"VALUES ({m}, {m}, {m}, {m}) ON CONFLICT (name) DO UPDATE SET "
                "position = excluded.position, saved_at = excluded.saved_at, "
                "state = excluded.state", (name, position, time.time(), blob))

    def load(self, name: str) -> Checkpoint | None:
        """``name``'s checkpoint, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT name, position, saved_at, state FROM detection_checkpoints "
                f"WHERE name = {self._mark}", (name,)).fetchone()
        return Checkpoint(row[0], int(row[1]), float(row[2]), bytes(row[3])) if row else None

    def positions(self) -> dict[str, tuple[int, float]]:
        """Every checkpoint's (position, saved_at) by name, without the blobs."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, position, saved_at FROM detection_checkpoints").fetchall()
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    def close(self) -> None:
        """Release the connection."""
        with self._lock:
            self._conn.close()
