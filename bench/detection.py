"""Harvest detection benchmark: the held-out test split, the adaptive attacker, throughput.

Default run (a few minutes, replay mode, embeddings off):

1. the evaluation's **test split** (``simulate.splits``: attackers and benign users written
   apart from the calibration split, on other ShareGPT conversations), run with the
   default rules, whose thresholds were calibrated on the calibration split only;
   one row per campaign and the benign false-positive figures;
2. the **adaptive attacker** (``simulate.adaptive``): a seeded search over attacker
   parameters for the largest haul never acted on, against the detector as it stands
   (``--aged-accounts``: bought accounts 45 or 180 days old are in its space too, and the
   best with new accounts only is printed apart);
3. **scoring throughput** on the synthetic streams below, events carrying the features
   the gateway computes (their cost per request printed apart), embeddings off unless
   ``--embeddings`` (then cached, and the embedding cost printed apart).

``--calibrate`` re-runs the calibration and rewrites ``detection/calibration.json``.

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
Detection runs every --interval simulated seconds (refresh + policy rules), by default
as often as the gateway runs it (the ``detection_interval`` setting, 10 s).
Usage: python bench/detection.py [--hours 12] [--budget 8] [--embeddings]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from distillguard.config import Settings
from distillguard.detection.corpus import sharegpt_first_turns
from distillguard.detection.pipeline import DetectionPipeline
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


def with_features(events):
    """The events as the gateway records them (features from the message list); returns
    the seconds that took, the gateway's share of the cost."""
    from distillguard.detection.features import flat_features

    start = time.perf_counter()
    for e in events:
        e.features = flat_features(e.prompt, e.params)
    return time.perf_counter() - start


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


def throughput(args) -> None:
    rnd = random.Random(args.seed)
    prompts = list(itertools.islice(sharegpt_first_turns(max_chars=1500), args.pool))
    keys = Keys()
    events, labels = streams(prompts, args.users, rnd, keys)
    took = with_features(events)
    print(f"\n## Scoring throughput\nstream: {len(events):,} events, {len(labels)} accounts; "
          f"gateway-side feature extraction {1e6 * took / len(events):.0f} us/request "
          f"(paid once when the event is built)")
    embedder = None
    if args.embeddings:
        import torch

        from distillguard.detection.embedder import CachedEmbedder, MiniLMEmbedder
        torch.set_num_threads(1)
        embedder = CachedEmbedder(MiniLMEmbedder(), max_entries=1_000_000)
        if args.embedding_cache and Path(args.embedding_cache).exists():
            embedder.load(args.embedding_cache)
        embedder.embed(["warm up"])
        texts = list(dict.fromkeys(DetectionPipeline.embed_text(e, e.features)
                                   for e in events))
        fresh = [t for t in texts if embedder.get(t) is None]
        # The cost is measured on the prompts not cached yet (or, all cached, on the
        # model itself for the first 64), then every prompt is cached for scoring.
        start = time.perf_counter()
        if fresh:
            embedder.embed(fresh)
        else:
            embedder.inner.embed(texts[:64])
        took = time.perf_counter() - start
        texts = fresh or texts[:64]
        if args.embedding_cache:
            embedder.save(args.embedding_cache)
        print(f"embedding cost (1 thread, model loaded): {len(texts)} distinct prompts in "
              f"{took:.1f} s = {len(texts) / took:.0f} prompts/s, "
              f"{1000 * took / len(texts):.1f} ms/prompt (separate from scoring)")
    settings = Settings.load(env={}, data_dir=tempfile.mkdtemp())
    pipeline = DetectionPipeline(settings, embedder=embedder, store=keys)
    if embedder is not None:  # fill the prompt cache: scoring runs on cached embeddings
        pipeline.observe_many(events[:1])
        for e in events:
            pipeline._prompt_info(DetectionPipeline.embed_text(e, e.features))
        pipeline = DetectionPipeline(settings, embedder=embedder, store=keys)
        pipeline._info = DetectionPipeline(settings, embedder=embedder)._info
    # CPU seconds of this process (scoring is single-threaded) as well as wall time:
    # on a shared machine the wall clock also counts other processes' turns.
    start, cpu = time.perf_counter(), time.process_time()
    for e in events:
        pipeline.observe(e)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"scoring throughput: {len(events) / cpu:,.0f} events per CPU-second on one core "
          f"({len(events) / took:,.0f} events/s wall; observe, embeddings "
          f"{'cached' if embedder else 'off'})")
    start = time.perf_counter()
    campaigns = pipeline.refresh()
    print(f"periodic job (baselines + campaigns) over {len(labels)} accounts: "
          f"{1000 * (time.perf_counter() - start):.0f} ms, {len(campaigns)} campaigns")
    tracemalloc.start()
    probe = DetectionPipeline(settings)
    before = tracemalloc.get_traced_memory()[0]
    for e in events:
        probe.observe(e)
    probe._info.clear()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"memory per tracked account: {(after - before) / len(labels) / 1024:.1f} KiB "
          f"(tracemalloc, prompt cache excluded)")


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def test_split(args) -> dict:
    from distillguard.simulate.run import run_scenario
    from distillguard.simulate.splits import build

    hours = args.hours
    base = Settings.load(env={}).replace(detection_embedding_sample=args.embedding_sample)
    m = run_scenario(build(args.split, duration=hours * 3600.0, interval=args.interval,
                           people_scale=args.people_scale), progress=False,
                     embeddings=args.embeddings, base_settings=base,
                     embedding_cache=args.embedding_cache)
    days = hours / 24.0
    emb = (f"embeddings on ({args.embedding_sample:.0%} of prompts)" if args.embeddings
           else "embeddings off")
    title = {"test": "Test split (held out)", "calibration": "Calibration split",
             "fresh": "Fresh split (held out, written without running detection)",
             "fresh2": "Second fresh split (held out, written without running detection)"
             }[args.split]
    if args.people_scale != 1.0:
        title += f", people x{args.people_scale:g}"
    print(f"\n## {title}, {hours:g} h simulated, replay, default calibrated "
          f"rules, {emb}, detection every {m['scenario']['detection_interval_s']:.0f} s\n"
          f"{m['totals']['requests']:,} requests in {m['run']['run_s']:.0f} s")
    print("| campaign | strategy | accounts | acted on | first action after | haul before "
          "first refusal | share of target | undetected haul / account / day |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in m["campaigns"].items():
        ttfa = c["time_to_first_action_s"]
        hb = c["haul_before_stop"]
        undetected = c["haul_total"]["tokens"] if not c["acted"] else hb["tokens"]
        print(f"| {name} | {c['strategy']} | {c['accounts']} | {c['members_acted']} | "
              f"{'-' if ttfa is None else f'{ttfa / 60:.1f} min'} | {hb['responses']:,} "
              f"responses, {_tokens(hb['tokens'])} tokens | "
              f"{100 * hb['share_of_target']:.1f}% | "
              f"{_tokens(undetected / c['accounts'] / days)} tokens |")
    a, f = m["accounts"], m["benign_friction"]
    pops = m["populations"]
    heavy_refused = sorted(n for n, p in pops.items() if p["label"] == "heavy"
                           and p["accounts_blocked"])
    # 95% upper bound on the rate when none was acted on: the rule of three, 3/n.
    bound = (f", 95% upper bound {300 / a['benign']:.2f}%" if a["benign"]
             and not a["benign_acted"] else "")
    print(f"\nbenign accounts acted on: {a['benign_acted']} of {a['benign']} active "
          f"({100 * a['fpr']:.2f}%{bound}): {a['benign_acted_names'][:8]}; heavy legitimate users "
          f"refused: {heavy_refused or 'none'}; benign requests refused: "
          f"{f['throttled'] + f['blocked']:,} of {f['requests']:,}")
    young = m["new_accounts"]
    print(f"new-account allowance: {young['benign']} benign accounts younger than 30 days; "
          f"the heaviest took {_tokens(young['heaviest_tokens'])} completion tokens, "
          f"{young['largest_share_of_allowance']:.0%} of its allowance")
    goals = m["goals"]
    print(f"goals: every campaign acted {goals['every_campaign_acted']}; benign FPR <= 0.1% "
          f"{goals['benign_fpr_at_most_0.1pct']}; no heavy user blocked "
          f"{goals['no_heavy_user_blocked']}; haul <= 1% of target: "
          + ", ".join(f"{k} {v}" for k, v in goals["haul_before_action_at_most_1pct"].items()))
    return m


def adaptive(args) -> None:
    from distillguard.simulate.adaptive import search

    space = ", bought accounts 45 or 180 days old in the space" if args.aged_accounts else ""
    print(f"\n## Adaptive attacker: {args.budget} replay runs of {args.search_hours:g} h "
          f"(random search then (1+1)-ES, seed {args.seed}{space}), against the default "
          f"rules")

    def log(t) -> None:
        p = t.params
        print(f"  accounts {p['accounts']:>2} rpm {p['per_account_rpm']:>6.2f} cover "
              f"{p['cover_share']:.2f} elicit {p['elicit_share']:.2f} tpl {p['template']:d} "
              f"human {p['human_timing']:d} rot {p['rotate']:d} pivot {p['pivot']:d} "
              f"max_tokens {p['max_tokens']:>4} greedy {p['greedy']:d} pad "
              f"{p.get('pad', 0):>5}"
              + (f" aged {p['aged_days']:>3.0f} d" if "aged_days" in p else "")
              + f": undetected {_tokens(t.haul_tokens)} tokens "
              f"({t.haul_responses:,} responses), {t.accounts_acted}/{t.accounts} acted; "
              f"benign acted {t.benign_acted}/{t.benign}", flush=True)

    trials = search(budget=args.budget, duration=args.search_hours * 3600.0, seed=args.seed,
                    log=log, aged=args.aged_accounts, interval=args.interval)

    def report(what: str, best) -> None:
        print(f"{what}: {best.params}\n  undetected haul "
              f"{_tokens(best.per_account_day)} completion tokens per account per day, "
              f"{_tokens(best.per_account)} per verified account over {args.search_hours:g} h "
              f"({_tokens(best.haul_tokens)} in all over {best.accounts} accounts, "
              f"{best.accounts_acted} acted on); benign accounts acted on at that operating "
              f"point: {best.benign_acted} of {best.benign}")

    report("best adaptive attacker", trials[0])
    if args.aged_accounts:
        new = [t for t in trials if not t.params.get("aged_days")]
        if new and new[0] is not trials[0]:
            report("best with new accounts only", new[0])


def main() -> int:
    if "--scale" in sys.argv[1:]:
        # The scale-out replay through the durable log lives in its own module.
        sys.path.insert(0, str(Path(__file__).parent))
        from detection_scale import main as scale_main

        return scale_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=12.0, help="simulated hours of the "
                    "test split")
    ap.add_argument("--budget", type=int, default=8, help="adaptive attacker runs")
    ap.add_argument("--search-hours", type=float, default=6.0, help="simulated hours per "
                    "adaptive run")
    ap.add_argument("--users", type=int, default=150, help="throughput stream: users")
    ap.add_argument("--pool", type=int, default=300, help="throughput stream: prompts")
    ap.add_argument("--embeddings", action="store_true", help="MiniLM embeddings on: "
                    "in the test split and --calibrate runs, and in throughput (cached)")
    ap.add_argument("--embedding-sample", type=float, default=1.0, help="share of prompts "
                    "embedded (the detection_embedding_sample setting)")
    ap.add_argument("--embedding-cache", default=None, help="an .npz of embeddings "
                    "(CachedEmbedder.save) to start from; throughput also saves to it")
    ap.add_argument("--only", choices=("test", "adaptive", "throughput"), default=None)
    ap.add_argument("--calibrate", action="store_true", help="re-run the calibration split "
                    "and rewrite detection/calibration.json, then stop")
    ap.add_argument("--split", choices=("test", "calibration", "fresh", "fresh2"),
                    default="test",
                    help="the split the first table runs (calibration: to check that no "
                    "benign account of the split the thresholds came from is acted on; "
                    "fresh, fresh2: strategies written without running detection on "
                    "them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interval", type=float,
                    default=Settings.load(env={}).detection_interval,
                    help="simulated seconds between detection rounds in the split, "
                    "adaptive and --calibrate runs (default: the detection_interval "
                    "setting's default, as the gateway runs them; the README's figures "
                    "from before this option ran at 60)")
    ap.add_argument("--aged-accounts", action="store_true", help="adaptive attacker: bought "
                    "accounts (45 or 180 days old) in its search space")
    ap.add_argument("--people-scale", type=float, default=1.0, help="test split: multiply "
                    "the accounts of its populations of people (casual users, students, "
                    "non-English users), for a false-positive rate over more accounts")
    args = ap.parse_args()
    if (args.embedding_cache and not Path(args.embedding_cache).exists()
            and args.only != "throughput"):
        ap.error(f"--embedding-cache {args.embedding_cache}: no such file (the throughput "
                 f"run writes it: --only throughput --embeddings --embedding-cache PATH)")
    if args.calibrate:
        import json

        from distillguard.detection.calibration import calibrate, save_calibration

        data = calibrate(embeddings=args.embeddings, embedding_sample=args.embedding_sample,
                         embedding_cache=args.embedding_cache, interval=args.interval)
        if args.embeddings:
            # Detection without embeddings gets thresholds of its own (policy.rules).
            lexical = calibrate(interval=args.interval)
            data["without_embeddings"] = {k: lexical[k] for k in (
                "split", "fp_rate", "benign_accounts", "duration_s", "margin", "note",
                "rules", "attack_accounts_above", "attack_accounts")}
        print(json.dumps(data, indent=1))
        print(f"written to {save_calibration(data)}")
        return 0
    if args.only in (None, "test"):
        test_split(args)
    if args.only in (None, "adaptive"):
        adaptive(args)
    if args.only in (None, "throughput"):
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
