"""Detection at the reported campaign's scale, through the durable log.

The reported campaign: 24,000 accounts and 16 million exchanges (~667 each), mixed with a
benign population of at least the same size (as many accounts, as many exchanges).
``--scale F`` replays the fraction F of both (F = 1 is the full size). Events are
synthetic (templated harvest prompts with long outputs, varied short benign prompts,
simulated time over --hours), written to a SQLite store and, for the 2-worker run, to
NATS JetStream through the gateway's publishing path; embeddings are off (MiniLM would
bound everything at a few hundred prompts/s on this machine; see MEASURED.md).

Reports:
- events/s with 1 worker (``DetectionRunner`` tailing the store, as ``serve`` does) and
  with 2 workers (two ``distillguard detect`` processes, one JetStream partition each,
  the campaign job in the first);
- memory per tracked account (RSS growth of the 1-worker process / accounts, and the
  checkpoint's size / accounts);
- time from the last harvest event written to the round that has read it finished
  (catch-up + baselines + campaigns + rules), and how many harvest / benign accounts
  carry an action then.

Usage: nice -n 10 python bench/detection.py --scale 0.002 [--no-jetstream]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from distillguard.config import Settings
from distillguard.detection.checkpoint import dump_state
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.service import DetectionRunner
from distillguard.policy.engine import PolicyEngine
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.store import open_store

CAMPAIGN_ACCOUNTS = 24_000
CAMPAIGN_EXCHANGES = 16_000_000
T0 = 1_750_000_000.0
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


def generate(scale: float, hours: float, seed: int) -> tuple[list[RequestEvent], int, int]:
    """Events in time order; (events, harvest accounts, benign accounts)."""
    rng = random.Random(seed)
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
    events.sort(key=lambda e: e.ts)
    return events, n_h, n_b


def one_worker(settings: Settings, store, events: list[RequestEvent], n_h: int) -> dict:
    """Replay all but the last harvest events, then time the last one to its action."""
    tail_at = max(i for i, e in enumerate(events) if e.account.startswith("harvest-"))
    store.write_events(events[:tail_at])
    clock = {"now": events[tail_at - 1].ts}
    pipeline = DetectionPipeline(settings)
    pipeline.clock = lambda: clock["now"]
    policy = PolicyEngine.from_settings(settings)
    policy.clock = pipeline.clock
    runner = DetectionRunner.from_settings(settings, pipeline, store, policy=policy,
                                           clock=pipeline.clock)
    runner.resume()
    rss0 = _rss_mb()
    t = time.perf_counter()
    read = runner.catch_up()
    observe_s = time.perf_counter() - t
    rss1 = _rss_mb()
    t = time.perf_counter()
    runner.round()
    first_round_s = time.perf_counter() - t
    store.write_events(events[tail_at:])
    clock["now"] = events[-1].ts
    t = time.perf_counter()
    runner.catch_up()
    runner.round()
    to_action_s = time.perf_counter() - t
    acted = {a.account for a in policy.actions()}
    blob = dump_state(pipeline, runner.position)
    accounts = len(pipeline.accounts())
    runner.close()
    policy.close()
    return {"events": read, "events_per_s": read / observe_s, "round_s": first_round_s,
            "accounts": accounts, "rss_per_account_kb": (rss1 - rss0) * 1024 / accounts,
            "checkpoint_per_account_kb": len(blob) / 1024 / accounts,
            "last_event_to_action_s": to_action_s,
            "harvest_acted": sum(a.startswith("harvest-") for a in acted),
            "benign_acted": sum(a.startswith("user-") for a in acted), "n_h": n_h}


def two_workers(base: dict, events: list[RequestEvent], tmp: Path) -> dict | None:
    """Publish through the gateway's path to JetStream, then time two detect processes."""
    from distillguard.detection.jetstream import NatsLink, PublishingStore, wait_for_stream

    if not wait_for_stream("nats://127.0.0.1:4222", timeout=2):
        print("no NATS JetStream at 127.0.0.1:4222: 2-worker run skipped")
        return None
    tag = uuid.uuid4().hex[:8]
    values = dict(base, data_dir=str(tmp / "js"), event_stream="nats", detection_partitions=2,
                  nats_stream=f"DGBENCH_{tag}", nats_subject=f"dgbench.{tag}",
                  detection_interval=1.0)
    settings = Settings.load(env={}, **values)
    store = open_store(settings)
    link = NatsLink(settings.nats_url.reveal())
    publishing = PublishingStore(store, link, settings)
    t = time.perf_counter()
    for i in range(0, len(events), 500):
        publishing.write_events(events[i:i + 500])
    publish_s = time.perf_counter() - t
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env.update({f"DISTILLGUARD_{k.upper()}": str(v) for k, v in values.items()})
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    # Start-up (imports, connections) measured apart, so the rate is of reading.
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distillguard.cli", "detect", "--partitions", "0",
                    "--duration", "0"], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    startup_s = time.perf_counter() - t
    procs = []
    t = time.perf_counter()
    for p in (0, 1):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distillguard.cli", "detect", "--partitions", str(p),
             "--duration", "600"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
    # Done when both partitions' checkpoints hold their last message.
    from distillguard.detection.checkpoint import CheckpointStore

    last = {}
    info = link.call(link.js.stream_info(settings.nats_stream))
    total = info.state.messages
    checkpoints = CheckpointStore.from_settings(settings)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        last = checkpoints.positions()
        if len(last) == 2 and max(pos for pos, _ in last.values()) >= info.state.last_seq:
            positions = sorted(pos for pos, _ in last.values())
            if positions[0] > 0:
                break
        time.sleep(0.2)
    elapsed = time.perf_counter() - t
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)
    checkpoints.close()
    link.call(link.js.delete_stream(settings.nats_stream))
    link.close()
    return {"events": total, "events_per_s": total / max(elapsed - startup_s, 1e-9),
            "publish_per_s": len(events) / publish_s, "elapsed_s": elapsed,
            "startup_s": startup_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, required=True,
                    help="fraction of the reported campaign (1 = 24,000 accounts, 16M "
                    "exchanges, plus as large a benign population)")
    ap.add_argument("--hours", type=float, default=24.0, help="simulated span")
    ap.add_argument("--no-jetstream", action="store_true", help="skip the 2-worker run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    events, n_h, n_b = generate(args.scale, args.hours, args.seed)
    print(f"scale {args.scale:g}: {n_h} harvest + {n_b} benign accounts, {len(events):,} "
          f"events over {args.hours:g} simulated h (generated in "
          f"{time.perf_counter() - t:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        base = {"detection_embeddings": False, "detection_interval": 3600.0,
                "detection_warmup_hours": 0, "detection_warmup_events": 0,
                "detection_max_accounts": max(100_000, 3 * (n_h + n_b))}
        settings = Settings.load(env={}, data_dir=str(Path(tmp) / "one"), **base)
        store = open_store(settings)
        one = one_worker(settings, store, events, n_h)
        store.close()
        print(f"1 worker (store log): {one['events']:,} events at "
              f"{one['events_per_s']:,.0f} events/s; round over {one['accounts']:,} accounts "
              f"{one['round_s']:.2f} s")
        print(f"memory per tracked account: {one['rss_per_account_kb']:.1f} KiB RSS, "
              f"{one['checkpoint_per_account_kb']:.2f} KiB in the checkpoint")
        print(f"last harvest event to action: {one['last_event_to_action_s']:.2f} s "
              f"(catch-up + round); then {one['harvest_acted']}/{n_h} harvest and "
              f"{one['benign_acted']}/{n_b} benign accounts carry an action")
        if not args.no_jetstream:
            two = two_workers(base, events, Path(tmp))
            if two:
                print(f"2 workers (JetStream, 2 partitions): {two['events']:,} events in "
                      f"{two['elapsed_s']:.1f} s, {two['events_per_s']:,.0f} events/s after "
                      f"a {two['startup_s']:.1f} s start-up (up to 1 s of it is the "
                      f"checkpoint interval that shows completion); published at "
                      f"{two['publish_per_s']:,.0f} events/s (store + PubAck)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
