"""Harvest detection benchmark: throughput, memory per account, quality on synthetic streams.

Streams (simulated time, 2 hours; prompts from real ShareGPT first turns):
- benign users: --users people, 5-60 requests each, human gaps, half multi-turn;
- heavy legitimate: an evaluation harness (templated multiple choice, logprobs, 1-token
  answers, 8 in parallel), a RAG app (templated context + question, 3 in parallel), a
  team of 10 people sharing one key;
- a bulk harvester (reasoning-eliciting wrapper around real prompts, max max_tokens,
  4 in parallel, long completions);
- a 50-account swarm: each ~1 request per 1-2 minutes (under a 10 RPM limit), keys
  created in one burst, one client library, proxy addresses, a shared wrapper template,
  topics split between members, moderate max_tokens.
Detection runs every --interval simulated seconds (refresh + policy rules), as in the
gateway. An account is "flagged" when any throttle/challenge/degrade/block action was
set on it. Usage: python bench/detection.py [--users 150] [--pool 300] [--no-embeddings]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
import tracemalloc

from distillguard.config import Settings
from distillguard.detection.corpus import sharegpt_first_turns
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.policy.engine import PolicyEngine
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keys import KeyRecord

T0 = 1_750_000_000.0
SPAN = 2 * 3600.0


class Keys:
    """A store stand-in that only answers list_keys (key creation times)."""

    def __init__(self) -> None:
        self.records: list[KeyRecord] = []

    def add(self, account: str, created_at: float) -> None:
        self.records.append(KeyRecord(f"key_{account}", account, "sk-dg-xxxx", created_at))

    def list_keys(self, account=None):
        return self.records


def ev(account, ts, prompt, out, inp, params, addr, ua, lat, i):
    return RequestEvent(ts=ts, request_id=f"{account}-{i}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=lat, account=account, client_addr=addr,
                        user_agent=ua, params=params, prompt=prompt, prompt_tokens=inp,
                        completion_tokens=out)


def streams(prompts: list[str], users: int, rnd: random.Random, keys: Keys):
    events, labels = [], {}
    for u in range(users):
        name = f"user{u}"
        labels[name] = "benign"
        keys.add(name, T0 - rnd.uniform(86400, 90 * 86400))
        ts = T0 + rnd.uniform(0, SPAN * 0.8)
        octets = (rnd.randint(1, 223), rnd.randint(0, 255), rnd.randint(0, 255),
                  rnd.randint(1, 254))
        addr = ".".join(map(str, octets))
        ua = rnd.choice(["Mozilla/5.0", "OpenAI/Python 1.50", "curl/8.5"])
        for i in range(rnd.randint(5, 60)):
            ts += rnd.lognormvariate(4.0, 1.2)
            p = rnd.choice(prompts)
            if rnd.random() < 0.5:
                p = f"user: {rnd.choice(prompts)[:300]}\nassistant: ...\nuser: {p}"
            else:
                p = f"user: {p}"
            events.append(ev(name, ts, p, int(rnd.lognormvariate(5.4, 0.7)),
                             len(p) // 4, {"temperature": rnd.choice([0.7, 1.0])},
                             addr, ua, 3000, i))
    # Heavy legitimate users.
    labels.update({"eval-harness": "benign-heavy", "rag-app": "benign-heavy",
                   "team-key": "benign-heavy"})
    for name in ("eval-harness", "rag-app", "team-key"):
        keys.add(name, T0 - rnd.uniform(86400, 30 * 86400))
    for i in range(2000):
        q = prompts[i % len(prompts)][:400]
        events.append(ev("eval-harness", T0 + 600 + i * 0.6,
                         f"user: Question: {q}\nA) yes\nB) no\nC) maybe\nD) none\nAnswer:",
                         1, 150, {"temperature": 0, "max_tokens": 1, "logprobs": True,
                                  "top_logprobs": 5}, "10.1.2.3", "lm-eval/0.4", 4800, i))
    ts = T0
    for i in range(1500):
        ts += rnd.expovariate(1 / 4.0)
        events.append(ev("rag-app", ts, "user: Answer using only the context.\nContext: \""
                         + rnd.choice(prompts)[:200] + "\"\nQuestion: " + rnd.choice(prompts)[:200],
                         rnd.randint(80, 400), 1500, {"temperature": 0.2, "max_tokens": 512},
                         "34.90.1.7", "python-requests/2.31", 2500, i))
    for m in range(10):
        ts = T0 + rnd.uniform(0, 1800)
        for i in range(40):
            ts += rnd.lognormvariate(4.2, 1.0)
            events.append(ev("team-key", ts, "user: " + rnd.choice(prompts),
                             int(rnd.lognormvariate(5.5, 0.7)), 200,
                             {"temperature": 0.7}, f"81.2.69.{m + 10}", "Mozilla/5.0", 3000,
                             m * 100 + i))
    # Bulk harvester.
    labels["harvester"] = "attack"
    keys.add("harvester", T0 - 3 * 86400)
    ts = T0 + 300
    for i in range(3000):
        ts += rnd.uniform(1.5, 2.5)
        p = rnd.choice(prompts)
        events.append(ev("harvester", ts, "user: Think step by step and give your full "
                         f"reasoning before the final answer.\n\n{p}", rnd.randint(900, 3000),
                         len(p) // 4 + 20, {"max_tokens": 4096, "temperature": 0.7},
                         f"45.12.{rnd.randint(0, 3)}.{rnd.randint(1, 254)}",
                         "python-httpx/0.27", 9000, i))
    # 50-account swarm.
    burst = T0 - 86400
    wrappers = ["Explain in detail, reasoning step by step:", "Answer thoroughly, "
                "showing your reasoning:"]
    for m in range(50):
        name = f"swarm{m:02d}"
        labels[name] = "attack"
        keys.add(name, burst + m * rnd.uniform(5, 30))
        share = prompts[m::50] or prompts
        ts = T0 + rnd.uniform(0, 600)
        for i in range(rnd.randint(40, 70)):
            ts += rnd.uniform(60, 120)
            p = rnd.choice(share)
            events.append(ev(name, ts, f"user: {rnd.choice(wrappers)} {p}",
                             rnd.randint(500, 1500), len(p) // 4 + 12,
                             {"max_tokens": 2048, "temperature": 0.8},
                             f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.9",
                             "python-requests/2.31", 7000, i))
    events.sort(key=lambda e: e.ts)
    return events, labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=150, help="benign casual users")
    ap.add_argument("--pool", type=int, default=300, help="distinct ShareGPT prompts used")
    ap.add_argument("--interval", type=float, default=30.0, help="simulated s between runs")
    ap.add_argument("--no-embeddings", action="store_true", help="skip MiniLM embeddings")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    prompts = list(itertools.islice(sharegpt_first_turns(max_chars=1500), args.pool))
    keys = Keys()
    events, labels = streams(prompts, args.users, rnd, keys)
    print(f"stream: {len(events):,} events, {len(labels)} accounts "
          f"({sum(v == 'attack' for v in labels.values())} attackers), {args.pool} prompts")

    embedder = None
    if not args.no_embeddings:
        import torch

        from distillguard.detection.embedder import CachedEmbedder, MiniLMEmbedder
        from distillguard.detection.text import last_user_turn
        torch.set_num_threads(1)
        embedder = CachedEmbedder(MiniLMEmbedder())
        embedder.embed(["warm up"])
        texts = list(dict.fromkeys(last_user_turn(e.prompt)[:1000] for e in events))
        start = time.perf_counter()
        embedder.embed(texts)
        took = time.perf_counter() - start
        print(f"embedding cost (1 thread, model loaded): {len(texts)} distinct prompts in "
              f"{took:.1f} s = {len(texts) / took:.0f} prompts/s, "
              f"{1000 * took / len(texts):.1f} ms/prompt")

    settings = Settings.load(env={}, data_dir=tempfile.mkdtemp())
    # Throughput: observe only, embeddings cached, one thread.
    pipeline = DetectionPipeline(settings, embedder=embedder, store=keys)
    start = time.perf_counter()
    for e in events:
        pipeline.observe(e)
    took = time.perf_counter() - start
    print(f"scoring throughput: {len(events) / took:,.0f} events/s (observe, one thread, "
          f"embeddings {'cached' if embedder else 'off'})")
    start = time.perf_counter()
    campaigns = pipeline.refresh()
    print(f"periodic job (baselines + campaigns) over {len(labels)} accounts: "
          f"{1000 * (time.perf_counter() - start):.0f} ms, {len(campaigns)} campaigns")

    tracemalloc.start()
    probe = DetectionPipeline(settings, embedder=embedder)
    before = tracemalloc.get_traced_memory()[0]
    for e in events:
        probe.observe(e)
    probe._info.clear()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"memory per tracked account: {(after - before) / len(labels) / 1024:.1f} KiB "
          f"(tracemalloc, prompt cache excluded)")

    # Quality: replay with detection + rules every interval.
    clock = [T0]
    engine = PolicyEngine.from_settings(settings)
    engine.clock = lambda: clock[0]
    pipeline = DetectionPipeline(settings, embedder=embedder, store=keys)
    first_action: dict[str, float] = {}
    served: dict[str, int] = {}
    before_action: dict[str, int] = {}
    next_run = T0 + args.interval
    for e in events:
        while e.ts >= next_run:
            clock[0] = next_run
            pipeline.refresh()
            for a in engine.evaluate(pipeline):
                if a.kind != "allow":
                    first_action.setdefault(a.account, a.created_at)
            next_run += args.interval
        pipeline.observe(e)
        served[e.account] = served.get(e.account, 0) + 1
        if e.account not in first_action:
            before_action[e.account] = served[e.account]
    clock[0] = next_run
    pipeline.refresh()
    for a in engine.evaluate(pipeline):
        first_action.setdefault(a.account, a.created_at)

    def rate(kind):
        accts = [a for a, k in labels.items() if k == kind]
        return sum(a in first_action for a in accts), len(accts)

    tp, n_att = rate("attack")
    fp, n_ben = rate("benign")
    fph, n_heavy = rate("benign-heavy")
    print(f"TPR (attack accounts flagged): {tp}/{n_att} = {tp / n_att:.2f}")
    print(f"FPR (benign users flagged): {fp}/{n_ben} = {fp / n_ben:.3f}; heavy legitimate "
          f"flagged: {fph}/{n_heavy} "
          f"{[a for a, k in labels.items() if k == 'benign-heavy' and a in first_action]}")
    kinds = {}
    for a in first_action:
        act = engine.current_action(a)
        kinds[a] = act.kind if act else "expired"
    h = before_action.get("harvester")
    print(f"harvester: {h} responses before its first action "
          f"({kinds.get('harvester', 'none')}, risk {pipeline.account_risk('harvester').risk:.2f})")
    swarm = sorted(before_action[a] for a, k in labels.items()
                   if k == "attack" and a.startswith("swarm"))
    caught = [a for a in labels if a.startswith("swarm") and a in first_action]
    print(f"swarm: {len(caught)}/50 members acted on; responses before first action per "
          f"member: median {swarm[len(swarm) // 2]}, max {swarm[-1]}, total {sum(swarm)}")
    top = pipeline.campaigns()[:3]
    for c in top:
        print(f"campaign {c.campaign_id}: {len(c.members)} members, risk {c.risk:.2f}, "
              f"evidence: {', '.join(e.kind for e in c.evidence)}")
    for a in ("eval-harness", "rag-app", "team-key"):
        r = pipeline.account_risk(a)
        print(f"{a}: risk {r.risk:.2f} groups {r.groups}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
