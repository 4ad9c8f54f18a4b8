"""Console render times with many accounts: every page, timed through the ASGI app.

Builds a detection state of ``--accounts`` accounts (most with a few requests, a handful
of harvesters and a sybil swarm with a shared template so that campaigns exist), stores
their events in SQLite, logs in with the admin token and renders each page ``--repeat``
times in-process (no network), printing the first render (a page's templates compile),
then the median and worst of the others, per page. Log-in starts counting the overview's
day chart in the background: the first overview render and how long that count took are
printed first, and the pages are timed once it is done. The
ranking order is built once before timing (its cost is printed: ``RiskIndex`` rebuilds
it in the background afterwards) and the figures are what an analyst waits for a page.

    nice -n 10 python bench/console.py --accounts 100000
    python bench/console.py --accounts 5000 --repeat 3      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time

TOPICS = ["python lists", "tax forms", "bread", "gardening", "linear algebra", "french verbs",
          "kubernetes", "marathons", "cats", "excel"]


def build_events(n_accounts: int, per_account: int, seed: int = 1) -> list:
    from distillguard.telemetry.events import RequestEvent

    rnd = random.Random(seed)
    now = time.time()
    events = []

    def ev(account: str, ts: float, prompt: str, i: int, *, out: int = 200, ua: str =
           "Mozilla/5.0", addr: str | None = None, params: dict | None = None) -> None:
        events.append(RequestEvent(
            ts=ts, request_id=f"{account}-{i}", endpoint="/v1/chat/completions", status=200,
            latency_ms=900.0, account=account,
            client_addr=addr or f"198.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.7",
            user_agent=ua, model="echo", params=params or {"max_tokens": 512},
            prompt=prompt, prompt_tokens=40, completion_tokens=out))

    for a in range(n_accounts):
        name = f"user{a:06d}"
        for i in range(rnd.randint(1, 2 * per_account - 1)):
            ev(name, now - rnd.uniform(0, 86400), f"user: how do I {rnd.choice(TOPICS)} "
               f"{rnd.randint(0, 10**6)}?", i, out=rnd.randint(50, 400))
    for h in range(10):
        name = f"harvester{h:02d}"
        for i in range(300):
            ev(name, now - 7200 + 20 * i, "user: Think step by step and show your full "
               f"reasoning before the final answer: {rnd.choice(TOPICS)} #{i}", i, out=1500,
               ua="python-httpx/0.27", params={"max_tokens": 4096, "temperature": 0.7})
    for s in range(30):
        name = f"swarm{s:02d}"
        for i in range(60):
            ev(name, now - 3600 + 50 * i + s, f"user: You are a dataset generator. Topic: "
               f"{rnd.choice(TOPICS)} {rnd.randint(0, 9999)}. Answer in full with reasoning.",
               i, out=900, ua="swarm-client/1.0", addr=f"203.0.113.{s}",
               params={"max_tokens": 2048, "temperature": 1.0})
    events.sort(key=lambda e: e.ts)
    return events


async def measure(args: argparse.Namespace) -> None:
    import httpx

    from distillguard.config import Settings
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.gateway import queries
    from distillguard.gateway.app import build_app
    from distillguard.telemetry.store import open_store

    folder = tempfile.TemporaryDirectory(prefix="dg-bench-console-")
    settings = Settings.load(env={}, data_dir=folder.name, admin_token="bench-token",
                             backend="echo", detection=False, detection_embeddings=False)
    t0 = time.perf_counter()
    events = build_events(args.accounts, args.events_per_account)
    store = open_store(settings)
    for i in range(0, len(events), 5000):
        store.write_events(events[i:i + 5000])
    for name in ("harvester00", "swarm00", "user000000"):
        store.create_key(name)
    pipeline = DetectionPipeline(settings, store=store)
    pipeline.observe_many(events)
    t_refresh = time.perf_counter()
    pipeline.refresh()
    refresh_s = time.perf_counter() - t_refresh
    print(f"state: {len(pipeline.accounts()):,} accounts, {len(events):,} events, "
          f"{len(pipeline.campaigns())} campaigns; built in {time.perf_counter() - t0:.0f} s "
          f"(one detection refresh {refresh_s:.1f} s)", file=sys.stderr)

    app = build_app(settings, store=store)
    async with app.router.lifespan_context(app):
        gateway = app.state.runtime
        gateway.detection = pipeline
        t_index = time.perf_counter()
        queries.risk_index(app).entries(pipeline)
        index_s = time.perf_counter() - t_index
        top = pipeline.campaigns()[0].campaign_id if pipeline.campaigns() else None
        gateway.policy.set_action("harvester01", "block", reason="bench", author="analyst:b")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            login = await client.get("/console/login")
            token = re.search(r'name="login_token" value="([^"]+)"', login.text).group(1)
            r = await client.post("/console/login", data={"login_token": token, "name": "",
                                                          "secret": "bench-token"})
            assert r.status_code == 303, r.text
            # Log-in starts counting the overview's day chart in the background; until
            # it is counted the overview says so. Time that, then render counted pages.
            t = time.perf_counter()
            first = await client.get("/console/")
            first_ms = (time.perf_counter() - t) * 1000
            counting = "Still counting" in first.text
            while "Still counting" in (await client.get("/console/")).text:
                assert time.perf_counter() - t < 60, "the overview chart was never counted"
                await asyncio.sleep(0.05)
            print(f"overview right after log-in: {first_ms:.0f} ms"
                  f"{' (chart still counting)' if counting else ''}; the day's chart was "
                  f"counted {time.perf_counter() - t:.2f} s after it")
            deep = max(1, args.accounts // 50 // 2)
            pages = {
                "overview": "/console/",
                "accounts, page 1": "/console/accounts",
                f"accounts, page {deep:,}": f"/console/accounts?page={deep}",
                "accounts, signal filter": "/console/accounts?signal=elicitation",
                "accounts, action filter": "/console/accounts?action=block",
                "account (harvester)": "/console/accounts/harvester00",
                "account (casual)": "/console/accounts/user000000",
                "campaigns": "/console/campaigns",
                "campaign": f"/console/campaigns/{top}" if top else None,
                "forensics": "/console/forensics",
                "audit": "/console/audit",
            }
            print(f"console render times at {len(pipeline.accounts()):,} accounts "
                  f"({args.repeat} renders each; ranking order built once in "
                  f"{index_s:.1f} s before timing):")
            print(f"  {'page':<28} {'first ms':>9} {'median ms':>10} {'worst ms':>10}")
            worst_all = 0.0
            for label, path in pages.items():
                if path is None:
                    continue
                times = []
                for _ in range(args.repeat + 1):
                    t = time.perf_counter()
                    r = await client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                # The first render compiles the page's templates.
                first, rest = times[0], times[1:]
                worst_all = max(worst_all, max(rest))
                print(f"  {label:<28} {first:>9.1f} {statistics.median(rest):>10.1f} "
                      f"{max(rest):>10.1f}")
            print(f"slowest render after the first: {worst_all:.0f} ms (goal: under 300 ms)")
    store.close()
    folder.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--events-per-account", type=int, default=2,
                        help="mean requests of an ordinary account (2)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
