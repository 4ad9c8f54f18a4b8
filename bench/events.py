"""Events per second through EventWriter into each store, and the cost of a key check.

    .venv/bin/python bench/events.py                  # 20,000 events, sqlite + postgres
    .venv/bin/python bench/events.py --events 200000 --stores sqlite

Each event is a realistic chat request (params, a ~400-character prompt, watermark
record). The writer runs as the gateway runs it: one thread, batches of --batch-size.
Rate = events / (first submit .. close() returned), so it includes the final drain.
PostgreSQL runs in a fresh schema (dropped afterwards) at --postgres-dsn; it is skipped
with a note when unreachable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid

from distillguard.config import Settings
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keycache import KeyCache
from distillguard.telemetry.store import Store, open_store
from distillguard.telemetry.writer import EventWriter

PROMPT = ("Explain, step by step and with a worked example, how a transformer's attention "
          "layer computes its output from queries, keys and values. ") * 3


def make_events(n: int, run: str) -> list[RequestEvent]:
    return [
        RequestEvent(
            ts=1_700_000_000.0 + i * 0.001, request_id=f"{run}-{i}",
            endpoint="/v1/chat/completions", status=200, latency_ms=850.0,
            account=f"acct-{i % 50}", key_id=f"key_{i % 50:016x}", client_addr="203.0.113.7",
            user_agent="OpenAI/Python 1.40.0", model="smollm2-135m-instruct",
            params={"temperature": 0.7, "max_tokens": 256, "top_p": 0.95, "n": 1},
            prompt=PROMPT, prompt_tokens=60, completion_tokens=200, stream=bool(i % 2),
            watermark={"scheme": "green_list", "key_id": "wk-2024", "cohort": "default",
                       "params": {"gamma": 0.25, "delta": 2.0, "context_width": 1}},
        )
        for i in range(n)
    ]


def bench_writer(store: Store, events: list[RequestEvent], batch_size: int) -> float:
    writer = EventWriter(store, batch_size=batch_size, flush_interval=0.2,
                         queue_size=len(events) + 1)
    start = time.perf_counter()
    for event in events:
        writer.submit(event)
    submitted = time.perf_counter()
    writer.close()
    elapsed = time.perf_counter() - start
    assert store.count_events() >= len(events), "events missing after close()"
    print(f"  submit() per event:          {(submitted - start) / len(events) * 1e6:8.1f} us")
    return len(events) / elapsed


def bench_key_check(store: Store, ttl: float) -> None:
    _, plaintext = store.create_key("bench")
    cache = KeyCache(store, ttl=ttl)
    cache.get(plaintext)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        cache.get(plaintext)
    hit_us = (time.perf_counter() - start) / n * 1e6
    lookups = []
    for _ in range(200):
        t = time.perf_counter()
        store.lookup_key(plaintext)
        lookups.append(time.perf_counter() - t)
    print(f"  KeyCache.get, cached key:    {hit_us:8.1f} us per call")
    print(f"  lookup_key (store read):     {statistics.median(lookups) * 1e6:8.1f} us median")


def run_store(name: str, settings: Settings, args: argparse.Namespace) -> None:
    store = open_store(settings)
    try:
        print(f"{name}: {args.events} events, batch {args.batch_size}")
        rates = []
        for round_ in range(args.rounds):
            events = make_events(args.events, f"{uuid.uuid4().hex[:8]}-{round_}")
            rates.append(bench_writer(store, events, args.batch_size))
        print(f"  events/s written (median of {args.rounds}): {statistics.median(rates):,.0f}"
              f"   (rounds: {', '.join(f'{r:,.0f}' for r in rates)})")
        bench_key_check(store, settings.key_cache_ttl)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--postgres-dsn",
                        default="host=127.0.0.1 port=5432 user=postgres dbname=test")
    args = parser.parse_args()

    for name in args.stores.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                run_store(name, Settings.load(env={}, data_dir=tmp, store="sqlite"), args)
        elif name == "postgres":
            import psycopg
            from psycopg.conninfo import make_conninfo

            try:
                admin = psycopg.connect(args.postgres_dsn, autocommit=True, connect_timeout=3)
            except psycopg.OperationalError as exc:
                print(f"postgres: skipped, not reachable: {exc}", file=sys.stderr)
                continue
            schema = f"dg_bench_{uuid.uuid4().hex[:8]}"
            admin.execute(f'CREATE SCHEMA "{schema}"')
            try:
                dsn = make_conninfo(args.postgres_dsn, options=f"-c search_path={schema}")
                run_store(name, Settings.load(env={}, store="postgres", postgres_dsn=dsn), args)
            finally:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
                admin.close()
        else:
            parser.error(f"unknown store {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
