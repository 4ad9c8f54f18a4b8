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
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply account counts (and campaign targets) by this")
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
