"""EventWriter: batching, flushing, draining on close, retries, back-pressure."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

import pytest

from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.sqlite_store import SQLiteStore
from distillguard.telemetry.writer import EventWriter, WriterClosed

SECRET_PROMPT = "the secret prompt text"


def make_event(i: int) -> RequestEvent:
    return RequestEvent(ts=1_700_000_000.0 + i, request_id=f"req-{i}",
                        endpoint="/v1/chat/completions", status=200, latency_ms=1.0,
                        account="acme", prompt=SECRET_PROMPT)


class RecordingStore:
    """Keeps written batches in memory; can fail its first writes or wait for a gate."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.failures = failures
        self.gate = threading.Event()
        self.gate.set()
        self.written_at: list[float] = []

    def write_events(self, events: list[RequestEvent]) -> None:
        self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        self.batches.append([e.request_id for e in events])
        self.written_at.append(time.monotonic())

    @property
    def ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


def test_a_partial_batch_is_written_within_the_flush_interval(tmp_path) -> None:
    with SQLiteStore(tmp_path) as store:
        writer = EventWriter(store, batch_size=1000, flush_interval=0.1)
        start = time.monotonic()
        for i in range(3):
            writer.submit(make_event(i))
        while store.count_events() < 3 and time.monotonic() - start < 5:
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        writer.close()
    assert store_count(tmp_path) == 3
    assert 0.05 < elapsed < 3.0  # waited for the batch to fill, but not for long


def store_count(path) -> int:
    with SQLiteStore(path) as store:
        return store.count_events()


def test_batches_are_at_most_batch_size_and_keep_order() -> None:
    store = RecordingStore()
    store.gate.clear()  # hold the writer so everything queues up first
    writer = EventWriter(store, batch_size=10, flush_interval=5.0)  # type: ignore[arg-type]
    for i in range(25):
        writer.submit(make_event(i))
    store.gate.set()
    assert writer.flush(timeout=5)
    writer.close()
    assert store.ids == [f"req-{i}" for i in range(25)]
    assert [len(b) for b in store.batches] == [10, 10, 5]


def test_flush_returns_once_everything_submitted_is_written() -> None:
    store = RecordingStore()
    writer = EventWriter(store, batch_size=1000, flush_interval=30.0)  # type: ignore[arg-type]
    for i in range(5):
        writer.submit(make_event(i))
    start = time.monotonic()
    assert writer.flush(timeout=5)
    assert time.monotonic() - start < 5.0  # did not wait for the 30 s interval
    assert store.ids == [f"req-{i}" for i in range(5)]
    assert writer.pending == 0
    writer.close()


def test_close_drains_everything_queued() -> None:
    store = RecordingStore()
    store.gate.clear()
    writer = EventWriter(store, batch_size=100, flush_interval=30.0)  # type: ignore[arg-type]
    for i in range(1000):
        writer.submit(make_event(i))
    store.gate.set()
    start = time.monotonic()
    assert writer.close(timeout=10)
    assert time.monotonic() - start < 5.0
    assert store.ids == [f"req-{i}" for i in range(1000)]
    with pytest.raises(WriterClosed):
        writer.submit(make_event(1001))
    assert writer.close() is True  # idempotent


def test_ten_thousand_events_land_exactly_once(tmp_path) -> None:
    with SQLiteStore(tmp_path) as store:
        writer = EventWriter(store, batch_size=500, flush_interval=0.05)
        for i in range(10_000):
            writer.submit(make_event(i))
        assert writer.close(timeout=60)
        assert store.count_events() == 10_000
        ids = [e.request_id for e in store.iter_events()]
    assert ids == [f"req-{i}" for i in range(10_000)]


def test_a_failing_store_is_retried_and_nothing_is_lost(caplog) -> None:
    store = RecordingStore(failures=3)
    writer = EventWriter(store, batch_size=100, flush_interval=0.01,  # type: ignore[arg-type]
                         retry_initial=0.01, retry_max=0.05)
    with caplog.at_level(logging.DEBUG, logger="distillguard.telemetry.writer"):
        for i in range(50):
            writer.submit(make_event(i))
        assert writer.flush(timeout=10)
        writer.close()
    assert sorted(store.ids) == sorted(f"req-{i}" for i in range(50))
    assert len(store.ids) == 50
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert "database is locked" in errors[0].getMessage()
    assert all(SECRET_PROMPT not in r.getMessage() for r in caplog.records)


def test_flush_times_out_while_the_store_keeps_failing() -> None:
    store = RecordingStore(failures=10**9)
    writer = EventWriter(store, flush_interval=0.01, retry_initial=0.01,  # type: ignore[arg-type]
                         retry_max=0.02)
    writer.submit(make_event(1))
    assert writer.flush(timeout=0.2) is False
    assert writer.close(timeout=0.1) is False
    assert writer.pending == 1
    store.failures = 0  # the store recovers: the retried event is written after all
    assert writer.close(timeout=5) is True
    assert store.ids == ["req-1"]


def test_a_full_queue_makes_submit_wait_not_drop(caplog) -> None:
    store = RecordingStore()
    store.gate.clear()
    writer = EventWriter(store, batch_size=1, flush_interval=0.01,  # type: ignore[arg-type]
                         queue_size=2)
    done = threading.Event()

    def produce() -> None:
        for i in range(10):
            writer.submit(make_event(i))
        done.set()

    with caplog.at_level(logging.WARNING, logger="distillguard.telemetry.writer"):
        producer = threading.Thread(target=produce)
        producer.start()
        assert not done.wait(0.3)  # blocked: the store is stuck and the queue is full
        store.gate.set()
        producer.join(timeout=5)
    assert done.is_set()
    writer.close()
    assert store.ids == [f"req-{i}" for i in range(10)]
    assert any("event queue full" in r.getMessage() for r in caplog.records)


def test_offer_never_blocks_and_keeps_every_served_event() -> None:
    store = RecordingStore()
    store.gate.clear()  # the store is stuck
    writer = EventWriter(store, batch_size=1, flush_interval=0.01,  # type: ignore[arg-type]
                         queue_size=2, overflow_size=3)
    started = time.perf_counter()
    kept = [writer.offer(make_event(i), served=True) for i in range(50)]
    assert time.perf_counter() - started < 0.5  # nothing waited
    assert all(kept) and writer.backlogged
    refused = [writer.offer(make_event(100 + i), served=False) for i in range(10)]
    assert sum(refused) == 0 and writer.shed == 10  # overflow is already past its size
    store.gate.set()
    assert writer.flush(timeout=5)
    assert not writer.backlogged
    writer.close()
    assert sorted(store.ids) == sorted(f"req-{i}" for i in range(50))


def test_refused_requests_events_fill_the_overflow_up_to_its_size() -> None:
    store = RecordingStore()
    store.gate.clear()
    writer = EventWriter(store, batch_size=1, flush_interval=0.01,  # type: ignore[arg-type]
                         queue_size=2, overflow_size=3)
    outcomes = [writer.offer(make_event(i), served=False) for i in range(10)]
    store.gate.set()
    writer.close()
    # Two in the queue (one may already be in the stuck write), three in the overflow.
    assert 5 <= sum(outcomes) <= 6 and writer.shed == 10 - sum(outcomes)
    assert len(store.ids) == sum(outcomes)


class RefusingStore(RecordingStore):
    """Refuses any batch that holds ``poison``; can also be down for a while."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison
        self.down = False

    def write_events(self, events: list[RequestEvent]) -> None:
        if self.down:
            raise ConnectionError("server closed the connection")
        if any(e.request_id == self.poison for e in events):
            raise ValueError("value refused")
        super().write_events(events)


def test_an_event_the_store_refuses_is_set_aside_and_the_rest_written(tmp_path, caplog) -> None:
    store = RefusingStore(poison="req-13")
    dead = tmp_path / "rejected.jsonl"
    writer = EventWriter(store, batch_size=50, flush_interval=0.01,  # type: ignore[arg-type]
                         retry_initial=0.001, retry_max=0.002, dead_letter_path=dead)
    store.gate.clear()
    for i in range(40):
        writer.submit(make_event(i))
    store.gate.set()
    assert writer.flush(timeout=10)
    writer.close()
    assert sorted(store.ids) == sorted(f"req-{i}" for i in range(40) if i != 13)
    (line,) = dead.read_text().splitlines()
    saved = json.loads(line)
    assert saved["event"]["request_id"] == "req-13" and "value refused" in saved["error"]
    assert RequestEvent.from_dict(saved["event"]) == make_event(13)


def test_an_outage_sets_nothing_aside(tmp_path) -> None:
    store = RefusingStore(poison="none")
    store.down = True
    dead = tmp_path / "rejected.jsonl"
    writer = EventWriter(store, batch_size=50, flush_interval=0.01,  # type: ignore[arg-type]
                         retry_initial=0.001, retry_max=0.005, dead_letter_path=dead)
    for i in range(20):
        writer.submit(make_event(i))
    assert writer.flush(timeout=0.5) is False  # splits and retries, writes nothing
    store.down = False
    assert writer.flush(timeout=10)
    writer.close()
    assert sorted(store.ids) == sorted(f"req-{i}" for i in range(20))
    assert not dead.exists()
