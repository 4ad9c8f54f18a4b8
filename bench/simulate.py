"""Simulator benchmark: replay events/s (simulated clock) and live requests/s (real HTTP).

Replay: a scenario of --accounts casual users (ShareGPT sessions, daily rhythm), the four
heavy legitimate users, a bulk harvester and a sybil swarm (--accounts/50 members) over
--days simulated days, detection every --interval simulated seconds. Prints generated
requests, the replay rate in events/s, the time a detection round takes, and what that
means for the issue's goal (a week of 10,000 accounts in under 10 minutes): measured
directly when you pass --accounts 10000 --days 7, else extrapolated from the measured
parts (events/s for the observing, round time x accounts for the periodic job).

Live: --live-accounts casual users and the same attackers over --live-hours, through a
real gateway (uvicorn on 127.0.0.1, official openai SDK, --concurrency clients in
flight, echo-style backend); prints requests/s over the time spent sending.

Scenarios: --scenarios all (or names, comma-separated) runs built-in scenarios in replay
mode instead and prints each one's metrics summary (as `distillguard simulate` does).

Usage: python bench/simulate.py [--accounts 1000] [--days 1] [--interval 600]
       [--embeddings] [--no-live] [--live-accounts 100] [--live-hours 3]
       python bench/simulate.py --scenarios all [--scale 1.0] [--embeddings]
"""

from __future__ import annotations

import argparse
import sys
import time

from distillguard.simulate.live import LiveRun
from distillguard.simulate.replay import ReplayRun
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import parse_scenario

WEEK_ACCOUNTS = 10_000


def scenario(accounts: int, seconds: float, interval: float, seed: int = 0):
    return parse_scenario({
        "scenario": {"name": "bench", "duration": seconds, "seed": seed,
                     "detection_interval": interval},
        "population": [{"kind": "casual", "accounts": accounts},
                       {"kind": "eval_harness"}, {"kind": "rag_app"},
                       {"kind": "shared_key"}, {"kind": "batch_job"}],
        "campaign": [{"strategy": "bulk_harvester", "target": 20000},
                     {"strategy": "sybil_swarm", "accounts": max(3, accounts // 50),
                      "target": max(100, accounts * 10)}],
    }, "bench")


def run_builtins(args: argparse.Namespace) -> int:
    from distillguard.simulate.cli import format_summary
    from distillguard.simulate.run import run_scenario
    from distillguard.simulate.scenario import builtin_names, load_scenario

    names = builtin_names() if args.scenarios == "all" else args.scenarios.split(",")
    for name in names:
        sc = load_scenario(name)
        m = run_scenario(sc, scale=args.scale, embeddings=args.embeddings, progress=False)
        print(f"=== {name} ({'held out' if sc.held_out else 'not held out'}; "
              f"{sc.duration / 86400:g} days, scale {args.scale:g}, embeddings "
              f"{'on' if m['embeddings'] else 'off'}, {m['totals']['accounts']:,} accounts, "
              f"{m['totals']['requests']:,} requests)")
        print(format_summary(m))
        aucs = ", ".join(f"{c} {r['auc']}" for c, r in m["roc_by_campaign"].items())
        print(f"ROC AUC per campaign: {aucs}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1000, help="casual users (replay)")
    ap.add_argument("--days", type=float, default=1.0, help="simulated days (replay)")
    ap.add_argument("--interval", type=float, default=600.0,
                    help="simulated seconds between detection rounds")
    ap.add_argument("--embeddings", action="store_true", help="MiniLM embeddings on")
    ap.add_argument("--no-live", action="store_true", help="skip the live-mode run")
    ap.add_argument("--live-accounts", type=int, default=100)
    ap.add_argument("--live-hours", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--scenarios", help="'all' or comma-separated built-in names: run "
                    "them and print their metrics instead of the throughput figures")
    ap.add_argument("--scale", type=float, default=1.0, help="scale for --scenarios")
    args = ap.parse_args()
    if args.scenarios:
        return run_builtins(args)

    sc = scenario(args.accounts, args.days * 86400, args.interval)
    t0 = time.perf_counter()
    traffic = Traffic.generate(sc)
    gen = time.perf_counter() - t0
    n, accts = len(traffic.requests), len(traffic.accounts)
    print(f"replay: {accts:,} accounts, {args.days:g} simulated days, {n:,} requests "
          f"(generated in {gen:.1f} s), detection every {args.interval:g} s, embeddings "
          f"{'on' if args.embeddings else 'off'}")
    run = ReplayRun(traffic, embeddings=args.embeddings, progress=True)
    # Time the periodic job separately: wrap refresh + evaluate.
    spent = {"round": 0.0, "rounds": 0}
    refresh, evaluate = run.pipeline.refresh, run.policy.evaluate

    def timed_refresh():
        t = time.perf_counter()
        out = refresh()
        spent["round"] += time.perf_counter() - t
        spent["rounds"] += 1
        return out

    def timed_evaluate(p):
        t = time.perf_counter()
        out = evaluate(p)
        spent["round"] += time.perf_counter() - t
        return out

    run.pipeline.refresh, run.policy.evaluate = timed_refresh, timed_evaluate
    t0 = time.perf_counter()
    try:
        run.run()
    finally:
        run.close()
    took = time.perf_counter() - t0
    rounds = spent["rounds"]
    observe = took - spent["round"]
    print(f"replay: {n / took:,.0f} simulated events/s ({took:.1f} s wall); "
          f"observing {n / observe:,.0f} events/s, detection rounds {rounds} x "
          f"{1000 * spent['round'] / max(rounds, 1):.0f} ms")
    # The goal: a week of 10,000 accounts. Events scale with accounts x days; a round's
    # cost with tracked accounts (measured here at ``accts``).
    scale = WEEK_ACCOUNTS / max(args.accounts, 1)
    week_events = n * scale * (7 / args.days)
    week_rounds = 7 * 86400 / args.interval
    per_round = spent["round"] / max(rounds, 1) * (WEEK_ACCOUNTS / accts)
    est = week_events / (n / observe) + week_rounds * per_round
    how = "measured" if args.accounts >= WEEK_ACCOUNTS and args.days >= 7 else "extrapolated"
    print(f"goal (week x {WEEK_ACCOUNTS:,} accounts, rounds every {args.interval:g} s): "
          f"~{week_events:,.0f} events, {how} {est / 60:.1f} min "
          f"({'meets' if est < 600 else 'misses'} the 10-minute goal)")

    if not args.no_live:
        live_sc = scenario(args.live_accounts, args.live_hours * 3600, 300.0, seed=1)
        live_traffic = Traffic.generate(live_sc)
        live = LiveRun(live_traffic, embeddings=args.embeddings, concurrency=args.concurrency,
                       progress=False)
        try:
            live.run()
        finally:
            live.close()
        print(f"live: {len(live_traffic.requests):,} requests from "
              f"{len(live_traffic.accounts)} accounts through the gateway (openai SDK, "
              f"{args.concurrency} in flight): {live.requests_per_s:,.0f} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
