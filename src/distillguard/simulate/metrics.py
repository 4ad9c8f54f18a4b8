"""Metrics of one run: what a security team asks of a detector, per scenario and strategy.

- campaign recall: share of campaigns with any member acted on (any action but allow);
- account true / false positive rates: attack accounts acted on, benign (casual and
  heavy) accounts acted on, each over the accounts that sent at least one request;
- time to first action: from a campaign's first harvesting request to the first action
  on a member (simulated seconds; detection runs once per ``detection_interval``);
- haul before stopped: responses and completion tokens the campaign got before its
  first action, and as a share of its target; also before its first action that limits
  responses (throttle, challenge, block: ``degrade`` still answers), and over the run;
- benign friction: benign requests refused with 429 (throttle) or 403 (block/challenge);
- ROC of the final account risk score (attack vs benign accounts) and its AUC, overall
  and per campaign (its members vs every benign account).

Goals (issue 5): every campaign acted on; benign FPR <= 0.1%; haul before the first action
<= 1% of target for every campaign; no heavy legitimate user blocked.
"""

from __future__ import annotations

from typing import Any

from distillguard.simulate.runner import Recorder

GOAL_FPR = 0.001
GOAL_HAUL_SHARE = 0.01


def roc(scores: list[float], positives: list[bool]) -> dict[str, Any]:
    """ROC points (``fpr``, ``tpr``, ``threshold``) of "acted if score >= threshold" and
    the area under the curve (ties counted half)."""
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    pairs = sorted(zip(scores, positives), key=lambda x: -x[0])
    points = [{"threshold": 1.0, "fpr": 0.0, "tpr": 0.0}]
    tp = fp = 0
    i = 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        points.append({"threshold": round(threshold, 4),
                       "fpr": fp / n_neg if n_neg else 0.0,
                       "tpr": tp / n_pos if n_pos else 0.0})
    auc = sum((b["fpr"] - a["fpr"]) * (a["tpr"] + b["tpr"]) / 2
              for a, b in zip(points, points[1:]))
    return {"auc": round(auc, 4) if n_pos and n_neg else None, "positives": n_pos,
            "negatives": n_neg, "points": points}


def compute(rec: Recorder, risks: dict[str, float], info: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a finished run (``info``: scenario and run facts to carry along)."""
    traffic = rec.traffic
    active = {n for n, a in rec.acct.items() if a.served or a.refused}
    specs = [s for s in traffic.accounts if s.name in active]
    attack = [s for s in specs if s.label == "attack"]
    benign = [s for s in specs if s.label != "attack"]
    acted = {n for n, a in rec.acct.items() if a.first_action is not None}

    def rate(group: list[Any]) -> float | None:
        return sum(s.name in acted for s in group) / len(group) if group else None

    heavy = [s for s in benign if s.label == "heavy"]
    populations: dict[str, Any] = {}
    for pop in traffic.populations:
        names = [s.name for s in traffic.accounts if s.group == pop.name]
        accts = [rec.acct[n] for n in names]
        populations[pop.name] = {
            "kind": pop.kind, "label": pop.label, "accounts": len(names),
            "accounts_active": sum(n in active for n in names),
            "accounts_acted": sum(n in acted for n in names),
            "accounts_blocked": sum(a.worst_kind in ("block", "challenge") for a in accts),
            "requests": sum(a.served + a.refused for a in accts),
            "served": sum(a.served for a in accts),
            "throttled": sum(a.throttled for a in accts),
            "blocked": sum(a.blocked for a in accts),
            "actions": sorted({a.worst_kind for a in accts if a.worst_kind}),
        }
    campaigns: dict[str, Any] = {}
    targets = traffic.targets()
    kinds = {p.name: p.kind for p in traffic.populations}
    starts = {p.name: getattr(p, "harvest_start", None) for p in traffic.populations}
    for name, camp in rec.camp.items():
        target = targets[name]
        # From the first harvesting request (a sleeper's earlier chat does not count).
        began = max(camp.first_request or 0.0, starts.get(name) or 0.0)
        ttfa = (camp.first_action - began
                if camp.first_action is not None and camp.first_request is not None else None)
        campaigns[name] = {
            "strategy": kinds[name], "accounts": len(rec.members[name]),
            "members_acted": camp.members_acted, "acted": camp.first_action is not None,
            "target": target, "first_request": camp.first_request,
            "first_action": camp.first_action, "time_to_first_action_s": ttfa,
            "haul_before_action": {"responses": camp.served_before,
                                   "tokens": camp.tokens_before,
                                   "share_of_target": camp.served_before / target},
            "first_stop": camp.first_stop,
            "haul_before_stop": {"responses": camp.served_before_stop,
                                 "tokens": camp.tokens_before_stop,
                                 "share_of_target": camp.served_before_stop / target},
            "haul_total": {"responses": camp.served, "tokens": camp.tokens,
                           "share_of_target": camp.served / target},
            "refused": camp.refused,
            "timeline": camp.timeline,
        }
    recall = (sum(c["acted"] for c in campaigns.values()) / len(campaigns)
              if campaigns else None)
    benign_fpr = rate(benign)
    friction = {"requests": rec.benign_requests,
                "throttled": rec.benign_refused["throttle"],
                "blocked": rec.benign_refused["block"],
                "refused_share": (sum(rec.benign_refused.values()) / rec.benign_requests
                                  if rec.benign_requests else 0.0)}
    heavy_blocked = [s.name for s in heavy
                     if rec.acct[s.name].worst_kind in ("block", "challenge")]
    haul_ok = {n: c["haul_before_action"]["share_of_target"] <= GOAL_HAUL_SHARE
               and c["acted"] for n, c in campaigns.items()}
    goals = {
        "every_campaign_acted": recall == 1.0 if campaigns else True,
        "benign_fpr_at_most_0.1pct": benign_fpr is not None and benign_fpr <= GOAL_FPR,
        "haul_before_action_at_most_1pct": haul_ok,
        "no_heavy_user_blocked": not heavy_blocked,
    }
    goals["all_met"] = (goals["every_campaign_acted"] and goals["benign_fpr_at_most_0.1pct"]
                        and all(haul_ok.values()) and goals["no_heavy_user_blocked"])
    names = [s.name for s in specs]
    return {
        "new_accounts": _new_accounts(rec, benign),
        **info,
        "totals": {"accounts": len(traffic.accounts), "accounts_active": len(specs),
                   "requests": rec.events, "detection_rounds": rec.rounds,
                   "actions": len(rec.action_log)},
        "campaign_recall": recall,
        "accounts": {
            "attack": len(attack), "attack_acted": sum(s.name in acted for s in attack),
            "tpr": rate(attack),
            "benign": len(benign), "benign_acted": sum(s.name in acted for s in benign),
            "fpr": benign_fpr,
            "benign_acted_names": sorted(s.name for s in benign if s.name in acted)[:50],
            "heavy": len(heavy), "heavy_acted": sorted(s.name for s in heavy if s.name in acted),
            "heavy_blocked": heavy_blocked,
        },
        "benign_friction": friction,
        "populations": populations,
        "campaigns": campaigns,
        "roc": roc([risks.get(n, 0.0) for n in names],
                   [rec.spec[n].label == "attack" for n in names]),
        # One curve per campaign: its members against every benign account.
        "roc_by_campaign": {
            c: roc([risks.get(s.name, 0.0) for s in group],
                   [s.label == "attack" for s in group])
            for c in campaigns
            for group in [[s for s in specs if s.campaign == c or s.label != "attack"]]},
        "goals": goals,
        "actions_by_kind": _count(a["kind"] for a in rec.action_log),
        "first_actions": sorted(
            ({"account": n, "t": a.first_action, "kind": a.first_kind,
              "label": rec.spec[n].label, "group": rec.spec[n].group}
             for n, a in rec.acct.items() if a.first_action is not None),
            key=lambda x: x["t"])[:500],
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """One row per campaign: the table printed by the CLI and shown in the report."""
    rows = []
    for name, c in metrics["campaigns"].items():
        ttfa = c["time_to_first_action_s"]
        rows.append([
            name, c["strategy"], f"{c['members_acted']}/{c['accounts']}",
            "-" if ttfa is None else _duration(ttfa),
            f"{c['haul_before_action']['responses']:,}",
            f"{100 * c['haul_before_action']['share_of_target']:.1f}%",
            f"{100 * c['haul_before_stop']['share_of_target']:.1f}%",
            f"{100 * c['haul_total']['share_of_target']:.1f}%"])
    return rows


SUMMARY_HEADER = ["campaign", "strategy", "acted", "time to 1st action", "haul before",
                  "before/target", "before stop/target", "total/target"]


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _new_accounts(rec: Recorder, benign: list[Any]) -> dict[str, Any]:
    """Benign accounts under the new-account allowance's age (``policy.rules``) at the
    run's end, and the largest share of its allowance one of them took."""
    from distillguard.policy.rules import NEW_ACCOUNT_ALLOWANCE as rule

    end = rec.traffic.world.end
    young = [(s.name, end - s.key_created_at) for s in benign
             if rule.max_age is not None and end - s.key_created_at < rule.max_age]
    top = max(((rec.acct[n].tokens / rule.allowance_at(age), n, rec.acct[n].tokens)
               for n, age in young), default=(0.0, None, 0))
    return {"benign": len(young), "heaviest": top[1], "heaviest_tokens": top[2],
            "largest_share_of_allowance": round(top[0], 4)}
