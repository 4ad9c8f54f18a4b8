"""The HTML report of a run: goals, tables and plots (matplotlib, embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from distillguard.simulate.metrics import GOAL_FPR, GOAL_HAUL_SHARE, SUMMARY_HEADER, summary_rows


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_roc(m: dict[str, Any]) -> str | None:
    """ROC of the final risk score; None when one class is missing."""
    import matplotlib.pyplot as plt

    roc = m["roc"]
    if not roc["positives"] or not roc["negatives"]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([p["fpr"] for p in roc["points"]], [p["tpr"] for p in roc["points"]],
            drawstyle="steps-post", lw=2, label=f"all campaigns (AUC {roc['auc']:.3f})")
    for name, curve in m.get("roc_by_campaign", {}).items():
        if curve["auc"] is not None:
            ax.plot([p["fpr"] for p in curve["points"]], [p["tpr"] for p in curve["points"]],
                    drawstyle="steps-post", lw=1, label=f"{name} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.axvline(GOAL_FPR, color="red", ls="--", lw=0.8, label="FPR goal 0.1%")
    ax.set_xlabel("false positive rate (benign accounts)")
    ax.set_ylabel("true positive rate (attack accounts)")
    ax.set_title("ROC of account risk at the end of the run")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_timelines(m: dict[str, Any]) -> str | None:
    """Per campaign: responses served and refused over time, members acted on, first action."""
    import matplotlib.pyplot as plt

    camps = m["campaigns"]
    if not camps:
        return None
    start = m["scenario"]["start"]
    fig, axes = plt.subplots(len(camps), 1, figsize=(8, 2.3 * len(camps)), squeeze=False)
    for ax, (name, c) in zip(axes[:, 0], camps.items()):
        tl = c["timeline"]
        hours = [(p["t"] - start) / 3600 for p in tl]
        ax.plot(hours, [p["served"] for p in tl], label="responses served")
        ax.plot(hours, [p["refused"] for p in tl], label="refused")
        ax.axhline(c["target"], color="grey", ls=":", lw=0.8, label="target")
        if c["first_action"] is not None:
            ax.axvline((c["first_action"] - start) / 3600, color="red", ls="--", lw=0.8,
                       label="first action")
        ax2 = ax.twinx()
        ax2.plot(hours, [p["max_risk"] for p in tl], color="purple", lw=0.8, alpha=0.6,
                 label="max member risk")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("risk", fontsize=8)
        ax.set_title(f"{name} ({c['strategy']}, {c['accounts']} accounts, "
                     f"{c['members_acted']} acted on)", fontsize=9)
        ax.set_ylabel("requests", fontsize=8)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("simulated hours since start")
    fig.tight_layout()
    return _png(fig)


def plot_haul(m: dict[str, Any]) -> str | None:
    """Haul before the first action as a share of each campaign's target, with the goal."""
    import matplotlib.pyplot as plt

    camps = m["campaigns"]
    if not camps:
        return None
    names = list(camps)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(names)))
    before = [100 * camps[n]["haul_before_action"]["share_of_target"] for n in names]
    total = [100 * camps[n]["haul_total"]["share_of_target"] for n in names]
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], total, height=0.4, color="lightgrey", label="whole run")
    ax.barh([i - 0.2 for i in y], before, height=0.4, label="before first action")
    ax.axvline(100 * GOAL_HAUL_SHARE, color="red", ls="--", lw=0.8, label="goal 1%")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xlabel("% of the campaign's target")
    ax.legend(fontsize=7)
    return _png(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def render(m: dict[str, Any]) -> str:
    """The report page for metrics ``m`` (as ``metrics.compute`` returns them)."""
    sc = m["scenario"]
    g = m["goals"]
    acc = m["accounts"]

    def mark(ok: bool) -> str:
        return '<b class="ok">met</b>' if ok else '<b class="no">NOT met</b>'

    haul_fail = [n for n, ok in g["haul_before_action_at_most_1pct"].items() if not ok]
    goals = _table(["goal", "result", "figures"], [
        ["every campaign acted on", "met" if g["every_campaign_acted"] else "NOT met",
         f"campaign recall {_pct(m['campaign_recall'])}"],
        ["benign account FPR <= 0.1%", "met" if g["benign_fpr_at_most_0.1pct"] else "NOT met",
         f"{acc['benign_acted']}/{acc['benign']} benign accounts acted on = {_pct(acc['fpr'])}"],
        ["haul before first action <= 1% of target",
         "met" if not haul_fail else "NOT met",
         "all campaigns" if not haul_fail else "short: " + ", ".join(haul_fail)],
        ["no heavy legitimate user blocked", "met" if g["no_heavy_user_blocked"] else "NOT met",
         ", ".join(acc["heavy_blocked"]) or "none blocked"],
    ])
    pops = _table(["population", "kind", "label", "accounts", "acted on", "blocked",
                   "requests", "throttled", "refused 403"],
                  [[n, p["kind"], p["label"], p["accounts"], p["accounts_acted"],
                    p["accounts_blocked"], p["requests"], p["throttled"], p["blocked"]]
                   for n, p in m["populations"].items()])
    images = [(t, f) for t, f in (("Haul before the first action", plot_haul(m)),
                                  ("ROC of the account risk score", plot_roc(m)),
                                  ("Campaign timelines", plot_timelines(m))) if f]
    figs = "".join(f"<h2>{html.escape(t)}</h2><img src=\"{src}\" alt=\"{html.escape(t)}\">"
                   for t, src in images)
    fr = m["benign_friction"]
    heavy = html.escape(", ".join(acc["heavy_acted"]) or "none")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distillguard simulation: {html.escape(sc['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}}.ok{{color:green}}.no{{color:#b00}}img{{max-width:100%}}</style>
</head><body>
<h1>Simulation: {html.escape(sc['name'])} ({html.escape(m['mode'])} mode)</h1>
<p>{html.escape(sc['description'])}</p>
<p>{sc['duration_s'] / 86400:.2f} simulated days, detection every
{sc['detection_interval_s']:.0f} s,
seed {sc['seed']}, scale {m['scale']}, embeddings {'on' if m['embeddings'] else 'off'};
{m['totals']['accounts']:,} accounts, {m['totals']['requests']:,} requests,
{m['totals']['actions']:,} actions. Scenario {'held out of' if sc['held_out'] else 'used in'}
detection calibration. Overall: {mark(g['all_met'])}.</p>
<h2>Goals</h2>{goals}
<h2>Campaigns</h2>{_table(SUMMARY_HEADER, summary_rows(m))}
<p>Account TPR {_pct(acc['tpr'])} ({acc['attack_acted']}/{acc['attack']}), FPR {_pct(acc['fpr'])}
({acc['benign_acted']}/{acc['benign']}); heavy users acted on: {heavy}.
Benign friction: {fr['throttled']:,} throttled and {fr['blocked']:,} refused (403) of
{fr['requests']:,} benign requests ({_pct(fr['refused_share'])}).
ROC AUC of the final risk: {m['roc']['auc']}.</p>
<h2>Populations</h2>{pops}
{figs}
</body></html>
"""
