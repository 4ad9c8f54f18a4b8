"""``distillguard simulate SCENARIO --out DIR``: run a scenario, write metrics and a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from distillguard.simulate.metrics import SUMMARY_HEADER, summary_rows


def add_commands(subparsers: Any) -> None:
    """Register ``simulate``."""
    p = subparsers.add_parser(
        "simulate", help="run a traffic scenario against detection and report metrics",
        description="Run a scenario (a built-in name or a TOML file) in replay mode "
                    "(straight into detection on a simulated clock) or live mode (real HTTP "
                    "through a gateway in simulation mode), then write metrics.json and "
                    "report.html to --out.")
    p.add_argument("scenario", nargs="?", help="built-in scenario name or path to a .toml")
    p.add_argument("--out", help="folder for metrics.json and report.html")
    p.add_argument("--mode", choices=("replay", "live"), default="replay")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply account counts (and campaign targets) by this (default 1; "
                        "0.1 with --target)")
    p.add_argument("--target", metavar="URL",
                   help="send the traffic to this running gateway (e.g. "
                        "http://127.0.0.1:8000) in compressed real time, creating the "
                        "accounts' keys through its admin API; watch it on /console/")
    p.add_argument("--admin-token", help="with --target: the gateway's admin token "
                   "(default: the admin_token setting)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="with --target: wall seconds the scenario is squeezed into (60)")
    emb = p.add_mutually_exclusive_group()
    emb.add_argument("--embeddings", dest="embeddings", action="store_true", default=None,
                     help="embed prompts with MiniLM (default: the detection_embeddings "
                          "setting; slow on CPU)")
    emb.add_argument("--no-embeddings", dest="embeddings", action="store_false")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--concurrency", type=int, default=32, help="live mode: clients in flight")
    p.add_argument("--list", action="store_true",
                   help="list built-in scenarios and population kinds, then exit")
    p.set_defaults(func=_simulate)


def _list() -> int:
    import dataclasses

    from distillguard.simulate.populations import POPULATIONS, population_kinds
    from distillguard.simulate.scenario import builtin_names, load_scenario

    print("built-in scenarios:")
    for name in builtin_names():
        sc = load_scenario(name)
        held = " [held out]" if sc.held_out else ""
        print(f"  {name}{held}: {sc.description}")
    print("population kinds ([[population]] kind = / [[campaign]] strategy =):")
    for kind in population_kinds():
        cls = POPULATIONS.get(kind)
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Params))
        print(f"  {kind} ({cls.label}): {fields}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from distillguard.simulate.populations import ScenarioError
    from distillguard.simulate.report import render
    from distillguard.simulate.run import run_scenario
    from distillguard.simulate.scenario import load_scenario

    if args.list:
        return _list()
    if args.target:
        return _target(args)
    if args.scale is None:
        args.scale = 1.0
    if not args.scenario or not args.out:
        print("error: give a SCENARIO and --out DIR (or --list)", file=sys.stderr)
        return 2
    if args.scale <= 0 or args.concurrency < 1:
        print("error: --scale must be positive and --concurrency at least 1", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
        if args.seed is not None:
            scenario.seed = args.seed
        embeddings = (args.settings.detection_embeddings if args.embeddings is None
                      else args.embeddings)
        print(f"scenario {scenario.name}: {scenario.duration / 86400:.2f} days, mode "
              f"{args.mode}, scale {args.scale}, embeddings {'on' if embeddings else 'off'}",
              file=sys.stderr)
        m = run_scenario(scenario, mode=args.mode, scale=args.scale, embeddings=embeddings,
                         base_settings=args.settings, concurrency=args.concurrency)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    (out / "report.html").write_text(render(m))
    print(format_summary(m))
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0


def _target(args: argparse.Namespace) -> int:
    from distillguard.simulate.live import TargetRun
    from distillguard.simulate.populations import ScenarioError
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.scenario import load_scenario

    token = args.admin_token or args.settings.admin_token.reveal()
    if not args.scenario or not token:
        print("error: --target needs a SCENARIO and --admin-token (or the admin_token "
              "setting)", file=sys.stderr)
        return 2
    scale = 0.1 if args.scale is None else args.scale
    if scale <= 0 or args.concurrency < 1 or args.duration <= 0:
        print("error: --scale and --duration must be positive and --concurrency at least 1",
              file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
        if args.seed is not None:
            scenario.seed = args.seed
        traffic = Traffic.generate(scenario, scale)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"scenario {scenario.name}: {len(traffic.accounts)} accounts, "
          f"{len(traffic.requests):,} requests over {scenario.duration / 3600:.0f} h, sent to "
          f"{args.target} in {args.duration:.0f} s (scale {scale}); watch "
          f"{args.target.rstrip('/')}/console/", file=sys.stderr)
    run = TargetRun(traffic, args.target, token, duration_s=args.duration,
                    concurrency=args.concurrency)
    import httpx

    try:
        run.run()
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"sent {len(traffic.requests):,} requests in {run.wall_s:.1f} s; answers by "
          f"group: {run.summary()}")
    attackers = sorted({a.name for a in traffic.accounts if a.campaign is not None})
    print(f"the attackers were: {', '.join(attackers)}")
    return 0


def format_summary(m: dict[str, Any]) -> str:
    """The plain-text summary of a run's metrics."""
    rows = [SUMMARY_HEADER] + summary_rows(m)
    widths = [max(len(r[i]) for r in rows) for i in range(len(SUMMARY_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    acc, g, fr = m["accounts"], m["goals"], m["benign_friction"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    lines += [
        f"campaign recall {pct(m['campaign_recall'])}; account TPR {pct(acc['tpr'])} "
        f"({acc['attack_acted']}/{acc['attack']}), benign FPR {pct(acc['fpr'])} "
        f"({acc['benign_acted']}/{acc['benign']}); ROC AUC {m['roc']['auc']}",
        f"heavy users acted on: {', '.join(acc['heavy_acted']) or 'none'}; blocked: "
        f"{', '.join(acc['heavy_blocked']) or 'none'}",
        f"benign friction: {fr['throttled']:,} throttled, {fr['blocked']:,} refused 403 of "
        f"{fr['requests']:,} benign requests",
        f"goals: {'all met' if g['all_met'] else 'NOT all met'} (campaigns acted "
        f"{g['every_campaign_acted']}, FPR<=0.1% {g['benign_fpr_at_most_0.1pct']}, haul<=1% "
        f"{sum(g['haul_before_action_at_most_1pct'].values())}/"
        f"{len(g['haul_before_action_at_most_1pct'])}, no heavy blocked "
        f"{g['no_heavy_user_blocked']})",
        f"run: {m['run']['run_s']:.1f} s, {m['run']['requests_per_s'] or 0:,.0f} requests/s "
        f"({m['mode']} mode)",
    ]
    return "\n".join(lines)
