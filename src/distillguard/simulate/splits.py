"""The evaluation's splits: the first two never meet.

- ``calibration``: the strategies of ``simulate.strategies`` and the benign populations
  of ``simulate.populations``, on ShareGPT conversations 0..4000 (filtered). Detection's
  rule thresholds are set from the benign scores of this split only
  (``detection.calibration``).
- ``test``: the strategies and benign populations of ``simulate.heldout``, written apart
  from the calibration ones, on ShareGPT conversations 4000..8000. Figures reported as
  held out come from this split only; the adaptive attacker (``simulate.adaptive``)
  searches in its world.
- ``fresh``: the strategies and benign populations of ``simulate.fresh``, written by a
  helper agent in one go without running detection on them, after the test split had
  been looked at many times. On the test split's conversations (the strategies are what
  is new); its kinds meet neither other split's. Looked at once, to report.
- ``fresh2``: the same again by another hand (``simulate.fresh2``), written without
  reading ``heldout`` or ``fresh``, run once after ``fresh`` had been looked at.

The splits' 8000 filtered conversations end at file index 9354. The priors
(``detection/priors.json``) are built from the records after it
(``simulate.corpus.end_index``: file indices 9355..15355), and the prompt-distribution
reference (``detection/prompt_reference.npz``) from file index 16000 on, so neither
shares a conversation with either split.
"""

from __future__ import annotations

import importlib
from typing import Any

from distillguard.simulate.populations import DAY, Model, population_kinds
from distillguard.simulate.scenario import DEFAULT_START, Scenario

SPLITS = ("calibration", "test", "fresh", "fresh2")
CORPUS = {"calibration": (0, 4000), "test": (4000, 4000), "fresh": (4000, 4000),
          "fresh2": (4000, 4000)}
# The splits written apart, each by a helper that ran no detection (module: its
# default seed).
WRITTEN_APART = {"fresh": 31, "fresh2": 41}


def _tables(items: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str,
                                                                         dict[str, Any], str]]:
    return [(kind, name, params, f"split:{name}") for kind, name, params in items]


def build(split: str, *, duration: float = DAY, seed: int | None = None,
          attackers: bool = True, benign: bool = True,
          extra: list[tuple[str, str, dict[str, Any]]] | None = None,
          interval: float = 60.0, people_scale: float = 1.0) -> Scenario:
    """The split's scenario: its benign populations and (``attackers``) its campaigns,
    plus ``extra`` (kind, name, params) tables; a release of a newer model half-way.
    ``people_scale`` multiplies the accounts of its populations of people (casual users,
    students, non-English users), for false-positive rates over more accounts."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    population_kinds()  # registers every population kind
    offset, size = CORPUS[split]
    people: list[tuple[str, str, dict[str, Any]]]
    attacks: list[tuple[str, str, dict[str, Any]]]
    if split == "calibration":
        people = [("casual", "casual", {"accounts": 300}),
                  ("casual", "power-users", {"accounts": 40, "sessions_per_day": 6.0,
                                             "turns": 4.0, "sdk_share": 0.8}),
                  ("eval_harness", "eval", {"items": 1500, "runs_per_day": 3.0}),
                  ("eval_harness", "cot-eval", {"items": 400, "runs_per_day": 4.0,
                                                "parallel": 8, "cot_max_tokens": 768}),
                  ("rag_app", "rag", {"per_day": 2000.0}),
                  ("rag_app", "rag-big", {"per_day": 8000.0, "tz": -5.0}),
                  ("shared_key", "team", {"members": 12}),
                  ("rag_app", "rag-sharded", {"accounts": 4, "per_day": 6000.0,
                                              "sharded": True, "tz": 8.0}),
                  ("org_seats", "org", {"accounts": 12}),
                  ("org_seats", "class", {"accounts": 25, "class_hour": 14.0,
                                          "show_work": 0.5, "system_prompt": False,
                                          "sessions_per_day": 0.5}),
                  ("shared_key", "reseller", {"members": 30, "reseller": True}),
                  ("batch_job", "batch", {"per_night": 800}),
                  ("batch_job", "batch-big", {"per_night": 3000, "hour": 22.0})]
        attacks = [("bulk_harvester", "bulk", {"target": 20000, "start": 7200.0}),
                   ("sybil_swarm", "swarm", {"accounts": 30, "target": 20000,
                                             "start": 14400.0}),
                   ("reasoning_trace", "traces", {"accounts": 10, "target": 10000}),
                   ("topic_sweep", "sweep", {"accounts": 5, "target": 5000}),
                   ("mimic", "mimic", {"accounts": 20, "target": 3000}),
                   # The sweep unlinked: sign-ups over four days, one address and agent
                   # of its own per account (the test split's sweep took 26 minutes).
                   ("topic_sweep", "sweep-apart", {"accounts": 5, "target": 5000,
                                                   "start": 10800.0,
                                                   "signup_spread": 4 * DAY,
                                                   "rotate": False})]
        seed = 11 if seed is None else seed
    elif split in WRITTEN_APART:
        # Each is a module of its own name that lists its tables.
        module = importlib.import_module(f"distillguard.simulate.{split}")
        people, attacks = list(module.PEOPLE), list(module.ATTACKS)
        seed = WRITTEN_APART[split] if seed is None else seed
    else:
        people = [("t_student", "people", {"accounts": 200, "show_work": 0.1,
                                           "sessions_per_day": 1.0}),
                  ("t_student", "students", {"accounts": 60, "show_work": 0.6}),
                  ("t_non_english", "intl", {"accounts": 40}),
                  ("t_cot_eval_harness", "cot-eval", {}),
                  ("t_rag_service", "rag", {}),
                  ("t_team_key", "team", {}),
                  ("t_reseller", "reseller", {}),
                  ("t_nightly_batch", "nightly", {})]
        attacks = [("t_cot_bulk", "cot-bulk", {}),
                   ("t_template_swarm", "template-swarm", {}),
                   ("t_human_mimic", "mimic", {}),
                   ("t_human_mimic", "mimic-single", {"accounts": 1, "target": 400}),
                   ("t_paraphrase_sweep", "paraphrase-sweep", {}),
                   ("t_soft_label", "soft-label", {}),
                   ("t_rotating_swarm", "rotating-swarm", {})]
        seed = 23 if seed is None else seed
    if people_scale != 1.0:
        if people_scale <= 0:
            raise ValueError(f"people_scale must be positive, got {people_scale!r}")
        people = [(kind, name, {**params, "accounts": max(1, round(params["accounts"]
                                                                     * people_scale))})
                  if "accounts" in params else (kind, name, params)
                  for kind, name, params in people]
    items = (people if benign else []) + (attacks if attackers else []) + (extra or [])
    start = DEFAULT_START
    return Scenario(
        name=f"{split}-split", description=f"the evaluation's {split} split",
        source=f"split:{split}", duration=duration, start=start, seed=seed,
        detection_interval=interval, held_out=split != "calibration",
        models=[Model("sim-model", start), Model("sim-model-2", start + duration / 2)],
        settings={}, policy=None, tables=_tables(items), corpus=size, corpus_offset=offset)
