"""What the SQLite store promises beyond the shared store tests."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keycache import KeyCache
from distillguard.telemetry.sqlite_store import CONTROL_FILE, EVENTS_FILE, SQLiteStore


def make_event(i: int) -> RequestEvent:
    return RequestEvent(ts=1_700_000_000.0 + i, request_id=f"req-{i}",
                        endpoint="/v1/chat/completions", status=200, latency_ms=1.0)


def test_plaintext_keys_never_reach_the_disk(tmp_path) -> None:
    with SQLiteStore(tmp_path) as store:
        record, plaintext = store.create_key("acme")
        store.revoke_key(record.key_id)
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert record.key_id.encode() in on_disk  # the check can see what is stored
    assert plaintext.encode() not in on_disk
    assert plaintext[len(record.prefix):].encode() not in on_disk


def test_a_revocation_by_another_process_is_seen_on_the_next_request(tmp_path) -> None:
    with SQLiteStore(tmp_path) as store:
        record, plaintext = store.create_key("acme")
        cache = KeyCache(store, ttl=3600.0)
        assert cache.get(plaintext).revoked_at is None
        script = textwrap.dedent(f"""
            from distillguard.telemetry.sqlite_store import SQLiteStore
            with SQLiteStore({str(tmp_path)!r}) as store:
                assert store.revoke_key({record.key_id!r})
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        assert cache.get(plaintext).revoked_at is not None


def test_event_writes_leave_the_keys_version_alone(tmp_path) -> None:
    with SQLiteStore(tmp_path) as store, SQLiteStore(tmp_path) as other:
        version = store.keys_version()
        other.write_events([make_event(i) for i in range(10)])
        assert store.keys_version() == version
        other.create_key("acme")
        assert store.keys_version() != version


def test_databases_use_write_ahead_logging(tmp_path) -> None:
    SQLiteStore(tmp_path).close()
    for name in (CONTROL_FILE, EVENTS_FILE):
        conn = sqlite3.connect(tmp_path / name)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
