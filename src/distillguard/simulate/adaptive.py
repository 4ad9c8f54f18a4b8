"""The adaptive attacker: a search over ``heldout.Adaptive``'s parameters for the largest
haul that is never acted on, against the detector as it stands (replay mode).

With ``aged`` the space also holds bought accounts (``AGES``: made 45 or 180 days before,
so detection holds them established) beside new ones; without it the search is the one
it always was (the same draws, the same trials for a seed).

Each candidate runs in the test split's world (its prompts, its benign background) with
the default rules. Its score is the **undetected haul**: completion tokens served to
its accounts before any action on them (a member acted on stops counting from then,
the others go on). The search is random sampling of the space, then a (1+1)
evolution strategy around the best (each step mutates a few parameters); the budget is
the number of runs. Seeded, so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

from distillguard.simulate.populations import DAY

ACCOUNTS = (1, 2, 3, 5, 10, 20, 40)
MAX_TOKENS = (256, 512, 1024, 2048, 4096)
# Characters of unrelated "context" before each harvest question (0: none).
PADS = (0, 0, 1000, 4000, 12000)
# Days before the start that bought accounts were made (0: new accounts, made 3 days
# before); drawn only by a search with ``aged``.
AGES = (0.0, 0.0, 45.0, 180.0)
# The light benign background of the search (the full test split measures FP rates).
BACKGROUND = [("t_student", "people", {"accounts": 120, "show_work": 0.1,
                                       "sessions_per_day": 1.0}),
              ("t_student", "students", {"accounts": 30, "show_work": 0.6}),
              ("t_non_english", "intl", {"accounts": 20}),
              ("t_cot_eval_harness", "cot-eval", {"items": 300}),
              ("t_rag_service", "rag", {"per_day": 1000.0}),
              ("t_team_key", "team", {"members": 10}),
              ("t_reseller", "reseller", {"customers": 20})]
# Cap on a candidate's requests, so that one run stays within seconds.
MAX_TARGET = 40000


def sample(rng: random.Random, aged: bool = False) -> dict[str, Any]:
    """A random point of the search space (``aged``: with bought accounts' age)."""
    point = {
        "accounts": rng.choice(ACCOUNTS),
        "per_account_rpm": round(math.exp(rng.uniform(math.log(0.05), math.log(20.0))), 3),
        "cover_share": round(rng.uniform(0.0, 0.9), 2),
        "elicit_share": round(rng.random(), 2),
        "template": rng.random() < 0.5,
        "human_timing": rng.random() < 0.5,
        "rotate": rng.random() < 0.5,
        "pivot": rng.random() < 0.3,
        "signup_spread": round(math.exp(rng.uniform(math.log(60.0), math.log(5 * DAY))), 0),
        "max_tokens": rng.choice(MAX_TOKENS),
        "greedy": rng.random() < 0.4,
        "pad": rng.choice(PADS),
    }
    if aged:
        point["aged_days"] = rng.choice(AGES)
    return point


def mutate(rng: random.Random, point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with one to three parameters moved."""
    out = dict(point)
    fresh = sample(rng, aged="aged_days" in point)
    for key in rng.sample(sorted(point), k=rng.randint(1, 3)):
        if key == "per_account_rpm":
            out[key] = round(min(20.0, max(0.05, out[key] * math.exp(rng.gauss(0, 0.7)))), 3)
        elif key in ("cover_share", "elicit_share"):
            out[key] = round(min(0.95, max(0.0, out[key] + rng.gauss(0, 0.2))), 2)
        else:
            out[key] = fresh[key]
    return out


@dataclasses.dataclass
class Trial:
    """One candidate's run: its parameters and what it got."""

    params: dict[str, Any]
    haul_tokens: int  # served before any action on the account, summed
    haul_responses: int
    accounts_acted: int
    accounts: int
    benign_acted: int
    benign: int
    duration_s: float

    @property
    def per_account_day(self) -> float:
        """Undetected completion tokens per account per day."""
        return self.haul_tokens / self.accounts / (self.duration_s / DAY)

    @property
    def per_account(self) -> float:
        """Undetected completion tokens per (verified) account over the run."""
        return self.haul_tokens / self.accounts


def evaluate(params: dict[str, Any], *, duration: float, seed: int,
             background: list[tuple[str, str, dict[str, Any]]] | None = None,
             base_settings: Any = None, interval: float = 60.0) -> Trial:
    """Run one candidate in replay and score it (a detection round every ``interval``
    simulated seconds)."""
    from distillguard.simulate.replay import ReplayRun
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.splits import build

    p = dict(params)
    minutes = duration / 60.0
    share = 1.0 - p["cover_share"]
    p["target"] = max(1, min(MAX_TARGET, int(p["accounts"] * p["per_account_rpm"] * minutes
                                             * share)))
    scenario = build("test", duration=duration, seed=seed, attackers=False,
                     benign=False, extra=(BACKGROUND if background is None else background)
                     + [("t_adaptive", "adaptive", p)], interval=interval)
    traffic = Traffic.generate(scenario)
    run = ReplayRun(traffic, base_settings=base_settings, progress=False)
    try:
        rec = run.run()
    finally:
        run.close()
    members = [a for a in traffic.accounts if a.label == "attack"]
    benign = [a for a in traffic.accounts if a.label != "attack"
              and (rec.acct[a.name].served or rec.acct[a.name].refused)]
    return Trial(params, sum(rec.acct[a.name].tokens_before for a in members),
                 sum(rec.acct[a.name].served_before for a in members),
                 sum(rec.acct[a.name].first_action is not None for a in members),
                 len(members),
                 sum(rec.acct[a.name].first_action is not None for a in benign), len(benign),
                 duration)


def search(*, budget: int = 12, duration: float = 6 * 3600.0, seed: int = 0,
           explore: float = 0.5, log: Callable[[Trial], None] | None = None,
           base_settings: Any = None, aged: bool = False,
           interval: float = 60.0) -> list[Trial]:
    """Random search (``explore`` of the budget), then (1+1)-ES around the best;
    ``aged``: bought accounts' age is a parameter too. Returns every trial, best
    (largest undetected haul) first."""
    rng = random.Random(seed)
    trials: list[Trial] = []
    best: Trial | None = None
    for i in range(budget):
        point = sample(rng, aged) if best is None or i < budget * explore \
            else mutate(rng, best.params)
        trial = evaluate(point, duration=duration, seed=seed + i, base_settings=base_settings,
                         interval=interval)
        trials.append(trial)
        if log is not None:
            log(trial)
        if best is None or trial.haul_tokens > best.haul_tokens:
            best = trial
    trials.sort(key=lambda t: -t.haul_tokens)
    return trials
