"""Rule thresholds set from benign scores on the evaluation's calibration split.

``calibrate`` runs the calibration split (``simulate.splits``) in replay with no rules,
records each benign account's highest own risk (``block-harvester`` compares the
account's own risk, without the campaign risk a core member carries) over every
detection round and each benign group's highest campaign risk (``block-campaign``, held
above both), and sets each built-in rule's threshold so that at most
``fp_rate`` of benign accounts would have reached it, and never below the highest
benign score plus ``MARGIN`` when the split has fewer than ``1 / fp_rate`` benign
accounts (then the measured rate is 0 of n and its 95% upper bound 3 / n, which the
file states). The result ships as ``calibration.json``; ``policy.rules`` builds its
default rules from it and each rule's reason quotes it.

With embeddings, the same run sets the threshold of the prompt-distribution signal
(``signals.prompt_distribution.far``): ``FAR_MARGIN`` times the highest squared MMD of
any benign account or benign group (members pooled) in any round. The run scores with
that signal's strength at 0; no benign account or group crosses the threshold set this
way, so their risks are the ones the signal would leave them with.

Run it with ``python bench/detection.py --calibrate`` (it rewrites the file).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "calibration.json"
MARGIN = 0.03
FP_RATE = 0.001
# The distribution test's threshold, relative to the highest benign value.
FAR_MARGIN = 1.25


def threshold(scores: list[float], fp_rate: float, margin: float = MARGIN) -> float:
    """The lowest threshold that at most ``fp_rate`` of ``scores`` reach, and no lower
    than the highest score plus ``margin`` when ``scores`` are too few to show that rate."""
    if not scores:
        return margin
    s = sorted(scores)
    allowed = math.floor(fp_rate * len(s))
    # ``allowed`` benign scores may reach the threshold: it sits above the rest.
    top = s[len(s) - allowed - 1] if allowed < len(s) else 0.0
    return round(min(1.0, top + margin), 4)


def calibrate(*, duration: float = 86400.0, fp_rate: float = FP_RATE,
              progress: bool = False, embeddings: bool = False,
              embedding_sample: float = 1.0,
              embedding_cache: str | None = None,
              interval: float = 60.0) -> dict[str, Any]:
    """Run the calibration split with no rules; return the calibration (see module).
    A detection round every ``interval`` simulated seconds; each benign score is its
    highest over the rounds, so a shorter interval can only raise it.

    ``embeddings`` turns the MiniLM embedding signals on (``embedding_sample``: the
    share of prompts embedded; ``embedding_cache``: embeddings saved by
    ``CachedEmbedder.save``, a warm start)."""
    from distillguard.config import Settings
    from distillguard.simulate.replay import ReplayRun
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.splits import build

    traffic = Traffic.generate(build("calibration", duration=duration, interval=interval))
    base = Settings.load(env={}).replace(detection_embedding_sample=embedding_sample)
    run = ReplayRun(traffic, progress=progress, embeddings=embeddings, base_settings=base,
                    embedding_cache=embedding_cache)
    run.policy.rules = []
    dist = next((s for s in run.pipeline.signals if s.name == "prompt_distribution"), None)
    if dist is not None:
        dist.calibration = None  # scored at strength 0 (see module)
    dist_i = run.pipeline.signals.index(dist) if dist is not None else -1
    benign_far: list[float] = []
    attack_dist: dict[str, list[float]] = {}
    labels = {a.name: a.label for a in traffic.accounts}
    benign_max: dict[str, float] = {}
    attack_max: dict[str, float] = {}
    benign_campaign: list[float] = []
    mixed_campaign_attack: list[float] = []
    try:
        for tick, reqs in traffic.slices():
            events = run._slice(reqs)
            if events:
                run.pipeline.observe_many(events)
            run.clock.set(tick)
            run.pipeline.refresh()
            for name in run.pipeline.accounts():
                risk = run.pipeline.account_risk(name).own_risk
                table = attack_max if labels.get(name) == "attack" else benign_max
                if risk > table.get(name, 0.0):
                    table[name] = risk
            if dist is not None:
                _distribution_values(run.pipeline, dist, dist_i, labels, benign_far,
                                     attack_dist)
            for c in run.pipeline.campaigns():
                core = c.core
                if not core:  # block-campaign reaches no one
                    continue
                if all(labels.get(m) != "attack" for m in core):
                    benign_campaign.append(c.risk)
                else:
                    mixed_campaign_attack.append(c.risk)
    finally:
        run.close()
    active = {r.account for r in traffic.requests}
    benign = [benign_max.get(a.name, 0.0) for a in traffic.accounts
              if a.label != "attack" and a.name in active]
    n = len(benign)
    account_t = threshold(benign, fp_rate)
    # A campaign is held to every benign score there is: a benign group's campaign risk
    # and any benign account's own risk, so that no benign team or app is blocked as one.
    campaign_t = threshold([max(benign_campaign, default=0.0), max(benign, default=0.0)],
                           0.0)
    note = (f"calibration split, {n} benign accounts over {duration / 3600:.0f} h; stated "
            f"false-positive rate {fp_rate:.1%}")
    if n < 1 / fp_rate:
        note += (f" (fewer than {1 / fp_rate:.0f} accounts: threshold above the highest "
                 f"benign score; measured 0 of {n}, 95% upper bound {3 / n:.1%})")
    signals: dict[str, Any] = {}
    if dist is not None and benign_far:
        far = round(max(benign_far) * FAR_MARGIN, 5)
        tested = sum(1 for a in _tested(run.pipeline, dist_i) if labels.get(a) != "attack")
        signals["prompt_distribution"] = {
            "far": far, "margin": FAR_MARGIN,
            "benign_max": round(max(benign_far), 5),
            "benign_accounts_tested": tested,
            "attack_accounts_above": sum(1 for v in attack_dist.values() if max(v) >= far),
            "attack_accounts_tested": len(attack_dist),
            "embedding_sample": embedding_sample,
            "note": (f"calibration split ({tested} benign accounts with enough embedded "
                     f"prompts, and every benign group, over {duration / 3600:.0f} h; "
                     f"{embedding_sample:.0%} of prompts embedded): highest benign "
                     f"{max(benign_far):.3f}; 0 of {tested} reached it, stated "
                     f"false-positive rate {fp_rate:.1%}"),
        }
    return {
        "split": "calibration", "fp_rate": fp_rate, "benign_accounts": n,
        "duration_s": duration, "interval_s": interval, "margin": MARGIN, "note": note,
        "embeddings": embeddings, "embedding_sample": embedding_sample,
        "signals": signals,
        "rules": {
            "block-harvester": {"min_risk": account_t,
                                "benign_max": round(max(benign, default=0.0), 4),
                                "benign_p99": round(sorted(benign)[int(0.99 * (n - 1))], 4)
                                if n else 0.0},
            "block-campaign": {"min_risk": campaign_t,
                               "benign_campaign_max": round(max(benign_campaign, default=0.0),
                                                            4),
                               "benign_campaigns_seen": len(benign_campaign)},
        },
        "attack_accounts_above": sum(v >= account_t for v in attack_max.values()),
        "attack_accounts": len(attack_max),
    }


def _tested(pipeline: Any, index: int) -> list[str]:
    from distillguard.detection.builtin import MIN_SKETCH_PROMPTS

    return [name for name, acct in pipeline._accounts.items()
            if acct.states[index][0] >= MIN_SKETCH_PROMPTS]


def _distribution_values(pipeline: Any, signal: Any, index: int, labels: dict[str, str],
                         benign_far: list[float], attack: dict[str, list[float]]) -> None:
    """One round's prompt-distribution values: benign accounts and benign groups (the
    members' pooled sketch, as a campaign is scored), and attack accounts for the
    record."""
    for name, acct in pipeline._accounts.items():
        state = acct.states[index]
        value = signal.value(state)
        if value is None:
            continue
        if labels.get(name) == "attack":
            attack.setdefault(name, []).append(value)
            continue
        benign_far.append(value)
    for c in pipeline.campaigns():
        if any(labels.get(m) == "attack" for m in c.members):
            continue
        pooled = signal.merge([pipeline._accounts[m].states[index] for m in c.members
                               if m in pipeline._accounts])
        value = signal.value(pooled)
        if value is not None:
            benign_far.append(value)


def load_calibration() -> dict[str, Any] | None:
    """The shipped calibration, or None when the package has none."""
    try:
        text = (resources.files("distillguard.detection") / CALIBRATION_FILE).read_text()
    except (FileNotFoundError, OSError):
        return None
    return json.loads(text)


def save_calibration(data: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write ``data`` as the shipped calibration (or to ``path``)."""
    target = Path(path) if path else Path(__file__).with_name(CALIBRATION_FILE)
    target.write_text(json.dumps(data, indent=1) + "\n")
    return target
