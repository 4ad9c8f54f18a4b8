"""``TrafficIndex``: the overview chart's counts, kept per settled bucket, equal the
store's own counts, and each read after the first counts only the last minutes."""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace

from distillguard.gateway import queries
from distillguard.telemetry.sqlite_store import SQLiteStore
from test_store import make_event

DAY = 86400.0
NOW = 1_700_000_000.0


class Counting:
    """The store, recording the ``since`` of each histogram read (and able to hold one)."""

    def __init__(self, store):
        self.store = store
        self.reads: list[float] = []
        self.hold: threading.Event | None = None

    def event_histogram(self, **kw):
        self.reads.append(kw["since"])
        if self.hold is not None and kw["until"] - kw["since"] > 10_000:
            self.hold.wait(10)
        return self.store.event_histogram(**kw)


def _brute(events, start, bucket_s, n, until):
    requests, accounts = [0] * n, [set() for _ in range(n)]
    for e in events:
        if start <= e.ts < until:
            i = int((e.ts - start) // bucket_s)
            requests[i] += 1
            accounts[i].add(e.account)
    return requests, [len(a) for a in accounts]


def _wait_for_counts():
    """Let the index's background counts finish."""
    for thread in threading.enumerate():
        if thread.name == "distillguard-traffic-count":
            thread.join(10)


def _events(rnd, k, lo, hi, offset=0):
    return [make_event(offset + i, ts=rnd.uniform(lo, hi), account=f"a{rnd.randint(0, 40)}")
            for i in range(k)]


def test_counts_match_the_store_and_later_reads_count_only_the_tail(tmp_path):
    rnd = random.Random(5)
    store = SQLiteStore(tmp_path)
    events = _events(rnd, 3000, NOW - 2 * DAY, NOW)
    store.write_events(events)
    counting = Counting(store)
    clock = SimpleNamespace(now=NOW)
    gateway = SimpleNamespace(store=counting, clock=lambda: clock.now)
    index = queries.TrafficIndex()
    h = index.histogram(gateway, window=DAY, buckets=60)
    assert h["complete"] and h["bucket_s"] == 1440.0 and len(h["requests"]) == 60
    assert h["start"] % 1440.0 == 0 and h["start"] + 60 * 1440.0 > NOW >= h["start"] + 59 * 1440
    assert (h["requests"], h["accounts"]) == _brute(events, h["start"], 1440.0, 60, NOW)

    # An hour later, with an hour of new traffic: one read of the last buckets only.
    later = _events(rnd, 200, NOW, NOW + 3600, offset=10_000)
    store.write_events(later)
    clock.now = NOW + 3600
    counting.reads.clear()
    h = index.histogram(gateway, window=DAY, buckets=60)
    assert len(counting.reads) == 1
    assert counting.reads[0] >= clock.now - queries.SETTLE_S - (queries.INLINE_BUCKETS + 1) * 1440
    assert (h["requests"], h["accounts"]) == _brute(events + later, h["start"], 1440.0, 60,
                                                    clock.now)
    store.close()


def test_first_read_answers_incomplete_while_the_count_runs_then_complete(tmp_path):
    store = SQLiteStore(tmp_path)
    events = _events(random.Random(6), 500, NOW - DAY, NOW)
    store.write_events(events)
    counting = Counting(store)
    counting.hold = threading.Event()
    gateway = SimpleNamespace(store=counting, clock=lambda: NOW)
    index = queries.TrafficIndex()
    h = index.histogram(gateway, window=DAY, buckets=60)
    assert not h["complete"]
    # What it shows are the buckets it could count: the unsettled tail.
    full = _brute(events, h["start"], 1440.0, 60, NOW)
    assert h["requests"][-1] == full[0][-1] and sum(h["requests"]) < sum(full[0])
    counting.hold.set()
    _wait_for_counts()
    h = index.histogram(gateway, window=DAY, buckets=60)
    assert h["complete"] and (h["requests"], h["accounts"]) == full
    store.close()


def test_kept_buckets_are_recounted_in_the_background(tmp_path):
    store = SQLiteStore(tmp_path)
    store.write_events(_events(random.Random(7), 100, NOW - DAY, NOW - 2 * 3600))
    mono = SimpleNamespace(t=0.0)
    index = queries.TrafficIndex(clock=lambda: mono.t)
    gateway = SimpleNamespace(store=store, clock=lambda: NOW)
    before = index.histogram(gateway, window=DAY, buckets=60)
    # An event written late into a settled bucket (a replay, an import): not seen yet...
    store.write_events([make_event(99_999, ts=NOW - 3 * 3600, account="late")])
    assert index.histogram(gateway, window=DAY, buckets=60)["requests"] == before["requests"]
    # ...until the kept buckets are recounted.
    mono.t = queries.RECOUNT_S + 1
    index.histogram(gateway, window=DAY, buckets=60)
    _wait_for_counts()
    after = index.histogram(gateway, window=DAY, buckets=60)
    assert sum(after["requests"]) == sum(before["requests"]) + 1
    store.close()


def test_warm_starts_the_count_without_waiting_for_it(tmp_path):
    import time

    store = SQLiteStore(tmp_path)
    events = _events(random.Random(8), 300, NOW - DAY, NOW)
    store.write_events(events)
    counting = Counting(store)
    counting.hold = threading.Event()
    gateway = SimpleNamespace(store=counting, clock=lambda: NOW)
    index = queries.TrafficIndex()
    started = time.perf_counter()
    index.warm(gateway, window=DAY, buckets=60)
    assert time.perf_counter() - started < 5  # the count is held for 10 s
    # A read while that count runs waits a little for it, then shows what is counted.
    assert not index.histogram(gateway, window=DAY, buckets=60)["complete"]
    assert time.perf_counter() - started < 5
    counting.hold.set()
    _wait_for_counts()
    h = index.histogram(gateway, window=DAY, buckets=60)
    assert h["complete"] and (h["requests"], h["accounts"]) == _brute(
        events, h["start"], 1440.0, 60, NOW)
    store.close()
