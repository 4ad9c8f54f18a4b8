"""Detection at the reported campaign's scale, through the durable log.

The reported campaign: 24,000 accounts and 16 million exchanges (~667 each), mixed with a
benign population of at least the same size (as many accounts, as many exchanges).
``--scale F`` replays the fraction F of both (F = 1 is the full size). Events are
synthetic (templated harvest prompts with long outputs, varied short benign prompts,
simulated time over the last --hours, ending now), carrying the prompt features the
gateway computes at request time (so the workers read what they read in production),
written to a SQLite store and, for the 2-worker run, to NATS JetStream through the
gateway's publishing path; embeddings are off (MiniLM would bound everything at a few
hundred prompts/s on this machine; see MEASURED.md).

Both runs read the log as the service does: a round (baselines, campaigns, rules) every
``--interval`` seconds of wall time, checkpoints on the service's own cadence. One
harvest account (the one with the last harvest event) is held back and written last, as
a burst, to time detection from a harvester's last event to its action.

Reports:
- events/s with 1 worker (``DetectionRunner.run``, the timer ``serve`` uses, tailing
  the store) and with 2 workers (two ``distillguard detect`` processes, one JetStream
  partition each, the campaign job in the first), read off the workers' own
  ``--metrics-port`` (``distillguard_detection_events_total``) from the first event read
  to the last, so process start-up is not counted;
- memory per tracked account (RSS growth of the 1-worker process / accounts, and the
  checkpoint's size / accounts);
- time from the held-back harvester's last event in the log to its action in the policy
  store, and how many harvest / benign accounts carry an action then.

A run that does not finish within ``--limit`` seconds says so, with how far it got.

Usage: nice -n 10 python bench/detection.py --scale 0.01 [--workers 1|2|both]
[--interval 10] [--limit 480]. On this project's shared 2-core machine --scale 0.01
(319k events) takes about 4 min with 1 worker and 6 min with 2 (publishing included),
--scale 0.02 about 8 min with 1 worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from distillguard.config import Settings
from distillguard.detection.checkpoint import dump_state
from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.service import DetectionRunner
from distillguard.policy.engine import PolicyEngine
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.store import open_store

CAMPAIGN_ACCOUNTS = 24_000
CAMPAIGN_EXCHANGES = 16_000_000
TOPICS = ["photosynthesis", "binary search", "the French revolution", "compound interest",
          "TCP handshakes", "plate tectonics", "Bayes' theorem", "sorting networks",
          "protein folding", "monetary policy", "graph colouring", "the Krebs cycle"]
BENIGN = ["Can you help me write a birthday message for my sister?",
          "What's a good name for a cat that is grey and lazy?",
          "my python script says KeyError: 'id' when I read the json, why",
          "Suggest a vegetarian dinner for four people.",
          "How do I politely decline a meeting invitation?",
          "Rewrite this sentence to sound friendlier: send me the file",
          "what time zone is used in Iceland", "Give me three ideas for a team offsite."]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(scale: float, hours: float, seed: int, end: float | None = None
             ) -> tuple[list[RequestEvent], int, int]:
    """Events in time order over the ``hours`` before ``end`` (default: now), so that the
    workers' wall clocks see them as recent; (events, harvest accounts, benign accounts)."""
    rng = random.Random(seed)
    T0 = (time.time() if end is None else end) - hours * 3600.0  # noqa: N806
    n_h = max(2, round(CAMPAIGN_ACCOUNTS * scale))
    per_h = max(1, CAMPAIGN_EXCHANGES // CAMPAIGN_ACCOUNTS)
    span = hours * 3600.0
    events = []
    rid = 0
    for a in range(n_h):
        account = f"harvest-{a}"
        start = rng.uniform(0, span * 0.2)
        step = (span - start) / per_h
        for i in range(per_h):
            rid += 1
            topic = TOPICS[(a + i) % len(TOPICS)]
            events.append(RequestEvent(
                ts=T0 + start + i * step + rng.uniform(0, step * 0.2), request_id=f"h{rid}",
                endpoint="/v1/chat/completions", status=200, latency_ms=900, account=account,
                client_addr=f"198.51.{a % 200}.{a % 250 + 1}", user_agent="python-httpx/0.27",
                model="m", params={"max_tokens": 4096, "temperature": 0.7, "n": 2},
                prompt=f"Task #{i}: Explain {topic} step by step. Show your full chain of "
                       f"thought, then grade it from 1 to {i % 7 + 3} as a JSON row.",
                prompt_tokens=60, completion_tokens=3000))
    # The benign population: as many accounts and exchanges, heavy-tailed per account.
    n_b = n_h
    weights = [rng.paretovariate(1.2) for _ in range(n_b)]
    total = sum(weights)
    for b, w in enumerate(weights):
        account = f"user-{b}"
        count = max(1, round(w / total * n_h * per_h))
        for _ in range(count):
            rid += 1
            events.append(RequestEvent(
                ts=T0 + rng.uniform(0, span), request_id=f"b{rid}",
                endpoint="/v1/chat/completions", status=200, latency_ms=400,
                account=account, client_addr=f"203.0.{b % 250}.{b % 200 + 1}",
                user_agent="Mozilla/5.0", model="m", params={"max_tokens": 512},
                prompt=rng.choice(BENIGN) + f" ({rng.randrange(1000)})",
                prompt_tokens=20, completion_tokens=rng.randrange(50, 400)))
    # The gateway computes each request's features from its message list before the
    # event is written (gateway/routes.py); events without them would send every worker
    # down the slower path kept for events stored before features existed.
    memo: dict[tuple[str, str], dict] = {}
    for e in events:
        key = (e.prompt, json.dumps(e.params, sort_keys=True))
        if key not in memo:
            memo[key] = request_features(None, e.prompt, e.params)
        e.features = memo[key]
    events.sort(key=lambda e: e.ts)
    return events, n_h, n_b


def held_back(events: list[RequestEvent]) -> tuple[list[RequestEvent], list[RequestEvent],
                                                   str]:
    """(the rest, the held-back harvester's events, its account): the harvester whose event
    is the last harvest event, written last as a burst."""
    last = next(e for e in reversed(events) if e.account.startswith("harvest-"))
    hold = last.account
    return ([e for e in events if e.account != hold], [e for e in events if e.account == hold],
            hold)


def _wait_until(done, limit: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(poll)
    return False


def one_worker(settings: Settings, store, events: list[RequestEvent], n_h: int,
               interval: float, limit: float) -> dict:
    """Replay the log through the in-process timer, then time the held-back harvester."""
    rest, burst, hold = held_back(events)
    store.write_events(rest)
    pipeline = DetectionPipeline(settings)
    policy = PolicyEngine.from_settings(settings)
    runner = DetectionRunner.from_settings(settings, pipeline, store, policy=policy)
    runner.resume()
    head = store.last_event_id()
    rss0 = _rss_mb()

    async def replay() -> dict:
        timer = asyncio.create_task(runner.run(interval, settings.detection_checkpoint_interval))
        out: dict = {}
        t = time.perf_counter()
        deadline = time.monotonic() + limit
        report = time.monotonic() + 30
        while runner.position < head and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if time.monotonic() >= report:  # a long run is not a hang
                report += 30
                print(f"  1 worker: {runner.observed:,} of {head:,} read", flush=True)
        out["observe_s"] = time.perf_counter() - t
        out["finished"] = runner.position >= head
        out["read"] = runner.observed
        out["rss1"] = _rss_mb()
        if out["finished"]:
            await asyncio.to_thread(store.write_events, burst)
            t = time.perf_counter()
            while policy.current_action(hold) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            out["to_action_s"] = (time.perf_counter() - t
                                  if policy.current_action(hold) is not None else None)
        timer.cancel()
        try:
            await timer
        except asyncio.CancelledError:
            pass
        return out

    out = asyncio.run(replay())
    t = time.perf_counter()
    runner.round()
    round_s = time.perf_counter() - t
    acted = {a.account for a in policy.actions()}
    blob = dump_state(pipeline, runner.position)
    accounts = len(pipeline.accounts())
    runner.close()
    policy.close()
    return {"events": out["read"], "events_per_s": out["read"] / out["observe_s"],
            "finished": out["finished"], "elapsed_s": out["observe_s"], "of": head,
            "round_s": round_s, "accounts": accounts,
            "rss_per_account_kb": (out["rss1"] - rss0) * 1024 / max(accounts, 1),
            "checkpoint_per_account_kb": len(blob) / 1024 / max(accounts, 1),
            "last_event_to_action_s": out.get("to_action_s"),
            "harvest_acted": sum(a.startswith("harvest-") for a in acted),
            "benign_acted": sum(a.startswith("user-") for a in acted), "n_h": n_h}


_TOTAL = re.compile(r'^distillguard_detection_events_total(?:\{[^}]*\})? (\S+)$', re.M)


def _events_read(ports: list[int]) -> int | None:
    """Events the workers observed, from their /metrics (None while one is not up)."""
    total = 0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        total += sum(int(float(v)) for v in _TOTAL.findall(text))
    return total


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_workers(base: dict, events: list[RequestEvent], tmp: Path, interval: float,
                limit: float) -> dict | None:
    """Publish through the gateway's path to JetStream, then time two detect processes."""
    from distillguard.detection.jetstream import NatsLink, PublishingStore, wait_for_stream

    if not wait_for_stream("nats://127.0.0.1:4222", timeout=2):
        print("no NATS JetStream at 127.0.0.1:4222: 2-worker run skipped")
        return None
    tag = uuid.uuid4().hex[:8]
    values = dict(base, data_dir=str(tmp / "js"), event_stream="nats", detection_partitions=2,
                  nats_stream=f"DGBENCH_{tag}", nats_subject=f"dgbench.{tag}",
                  detection_interval=interval)
    settings = Settings.load(env={}, **values)
    rest, burst, hold = held_back(events)
    store = open_store(settings)
    link = NatsLink(settings.nats_url.reveal())
    publishing = PublishingStore(store, link, settings)
    t = time.perf_counter()
    for i in range(0, len(rest), 500):
        publishing.write_events(rest[i:i + 500])
    publish_s = time.perf_counter() - t
    print(f"  published {len(rest):,} events in {publish_s:.0f} s", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env.update({f"DISTILLGUARD_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    ports = [_free_port(), _free_port()]
    start = time.perf_counter()
    procs = []
    logs = []
    for p in (0, 1):
        logs.append(open(tmp / f"worker-{p}.log", "w"))  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distillguard.cli", "detect", "--partitions", str(p),
             "--metrics-port", str(ports[p]), "--duration", str(limit + 120)], env=env,
            stdout=logs[-1], stderr=subprocess.STDOUT))
    policy = PolicyEngine.from_settings(settings)
    out: dict = {"events": len(rest), "publish_per_s": len(rest) / publish_s}
    try:
        # The rate runs from the first event read, so start-up is not counted.
        first: list[tuple[float, int]] = []
        report = [time.monotonic() + 30]

        def progressed() -> bool:
            n = _events_read(ports)
            if n and not first:
                first.append((time.perf_counter(), n))
            out["read"] = n or 0
            if time.monotonic() >= report[0]:  # a long run is not a hang
                report[0] += 30
                print(f"  2 workers: {out['read']:,} of {len(rest):,} read", flush=True)
            return n is not None and n >= len(rest)

        out["finished"] = _wait_until(progressed, limit, poll=0.5)
        end = time.perf_counter()
        if first:
            t0, n0 = first[0]
            out["events_per_s"] = (out["read"] - n0) / max(end - t0, 1e-9)
            out["startup_s"] = t0 - start
        out["elapsed_s"] = end - start
        if out["finished"]:
            for i in range(0, len(burst), 500):
                publishing.write_events(burst[i:i + 500])
            t = time.perf_counter()
            if _wait_until(lambda: policy.current_action(hold) is not None, limit):
                out["last_event_to_action_s"] = time.perf_counter() - t
            acted = {a.account for a in policy.actions()}
            out["harvest_acted"] = sum(a.startswith("harvest-") for a in acted)
            out["benign_acted"] = sum(a.startswith("user-") for a in acted)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
        policy.close()
        store.close()
        link.call(link.js.delete_stream(settings.nats_stream))
        link.close()
    return out


def _seconds(x: float | None) -> str:
    return "not within the limit" if x is None else f"{x:.2f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, required=True,
                    help="fraction of the reported campaign (1 = 24,000 accounts, 16M "
                    "exchanges, plus as large a benign population)")
    ap.add_argument("--hours", type=float, default=24.0, help="simulated span")
    ap.add_argument("--workers", choices=("1", "2", "both"), default="both",
                    help="which runs: 1 worker on the store, 2 on JetStream, or both")
    ap.add_argument("--no-jetstream", action="store_true", help="same as --workers 1")
    ap.add_argument("--interval", type=float, default=10.0, help="detection_interval of "
                    "both runs: seconds between rounds (the product default: 10)")
    ap.add_argument("--limit", type=float, default=480.0, help="seconds each run may read "
                    "before it is reported as unfinished")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    runs = "1" if args.no_jetstream else args.workers
    t = time.perf_counter()
    events, n_h, n_b = generate(args.scale, args.hours, args.seed)
    print(f"scale {args.scale:g}: {n_h} harvest + {n_b} benign accounts, {len(events):,} "
          f"events over {args.hours:g} simulated h (generated in "
          f"{time.perf_counter() - t:.1f} s); rounds every {args.interval:g} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = {"detection_embeddings": False, "detection_interval": args.interval,
                "detection_warmup_hours": 0, "detection_warmup_events": 0,
                "detection_max_accounts": max(100_000, 3 * (n_h + n_b))}
        if runs in ("1", "both"):
            settings = Settings.load(env={}, data_dir=str(Path(tmp) / "one"), **base)
            store = open_store(settings)
            one = one_worker(settings, store, events, n_h, args.interval, args.limit)
            store.close()
            done = "" if one["finished"] else (f" (UNFINISHED: {one['events']:,} of "
                                               f"{one['of']:,} read in {args.limit:g} s)")
            print(f"1 worker (store log): {one['events']:,} events in {one['elapsed_s']:.1f} "
                  f"s, {one['events_per_s']:,.0f} events/s{done}; a round over "
                  f"{one['accounts']:,} accounts takes {one['round_s']:.2f} s")
            print(f"memory per tracked account: {one['rss_per_account_kb']:.1f} KiB RSS, "
                  f"{one['checkpoint_per_account_kb']:.2f} KiB in the checkpoint")
            print(f"held-back harvester's last event to its action (1 worker): "
                  f"{_seconds(one['last_event_to_action_s'])}; then {one['harvest_acted']}/"
                  f"{n_h} harvest and {one['benign_acted']}/{n_b} benign accounts carry an "
                  f"action", flush=True)
        if runs in ("2", "both"):
            two = two_workers(base, events, Path(tmp), args.interval, args.limit)
            if two:
                done = "" if two["finished"] else (f" (UNFINISHED: {two['read']:,} of "
                                                   f"{two['events']:,} read in "
                                                   f"{args.limit:g} s)")
                rate = (f"{two['events_per_s']:,.0f} events/s from the first event read "
                        f"(start-up {two['startup_s']:.1f} s)" if "events_per_s" in two
                        else "nothing read")
                print(f"2 workers (JetStream, 2 partitions): {two['events']:,} events in "
                      f"{two['elapsed_s']:.1f} s, {rate}{done}; published at "
                      f"{two['publish_per_s']:,.0f} events/s (store + PubAck)")
                if two["finished"]:
                    print(f"held-back harvester's last event to its action (2 workers): "
                          f"{_seconds(two.get('last_event_to_action_s'))}; then "
                          f"{two['harvest_acted']}/{n_h} harvest and {two['benign_acted']}/"
                          f"{n_b} benign accounts carry an action")
    return 0


if __name__ == "__main__":
    sys.exit(main())
