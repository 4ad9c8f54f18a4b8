"""Baselines shipped with the package: what real users' signal values look like.

A live population of two accounts is no baseline. Until ``detection_baseline_min_accounts``
accounts have enough events, detection compares against these priors instead, and says
so in its reasons. They are built from real ShareGPT conversations (not the ones the
simulator uses) by ``scripts/build_priors.py``: accounts are made of consecutive
conversations, every human turn becomes a request carrying the earlier turns and the
real assistant answers, and each signal that needs no timing is computed per account.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from distillguard.detection.signals import Baseline

PRIORS_FILE = "priors.json"


def load_priors(data: dict[str, Any] | None = None) -> dict[str, Baseline]:
    """Signal name -> its prior ``Baseline`` (``source="prior"``); {} when none shipped."""
    if data is None:
        try:
            text = (resources.files("distillguard.detection") / PRIORS_FILE).read_text()
        except (FileNotFoundError, OSError):
            return {}
        data = json.loads(text)
    out = {}
    for name, row in data.get("signals", {}).items():
        out[name] = Baseline(float(row["median"]), float(row["p90"]), int(row["accounts"]),
                             source="prior", p99=float(row["p99"]))
    return out
