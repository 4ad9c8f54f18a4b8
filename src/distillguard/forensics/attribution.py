"""Attribution: which cohorts of accounts a suspect learned from, and who is in them.

Each watermark key id maps every account to one of C cohorts (an HMAC of the account
under that key), and each (key id, cohort) embeds with its own derived key. A test tries
every (key id, cohort); ``attribute`` corrects the per-cohort p-values for that number
(Holm, which controls the family-wise error for any dependence), names the cohorts below
``alpha``, and, given the store's accounts, the accounts in them.

Narrowing to single accounts: a rotation (a new key id) re-draws every account's cohort,
independently of the previous draw, so among A accounts that share a flagged cohort about
A / C share the flagged cohort of the next key too. After r rotations during which the
suspect kept learning, A / C**r remain: ``rotations_needed`` = ceil(log A / log C).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

from distillguard.forensics.radioactivity import KeyResult


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def rotations_needed(accounts: int, cohorts: int) -> int:
    """Rotations after which one account is expected to remain of ``accounts``."""
    if accounts <= 1 or cohorts <= 1:
        return 0 if accounts <= 1 else -1
    return math.ceil(math.log(accounts) / math.log(cohorts))


@dataclasses.dataclass
class CohortFinding:
    """One (key id, cohort) with its raw and corrected p-values."""

    key_id: str
    cohort: int
    p_value: float
    p_value_holm: float
    flagged: bool
    accounts: list[str] | None = None


@dataclasses.dataclass
class Attribution:
    """Which cohorts the suspect learned from, and the accounts they narrow to."""

    alpha: float
    correction: str
    cohorts: list[CohortFinding]
    candidate_accounts: list[str] | None
    accounts_known: int | None
    rotations_needed: int | None
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def flagged(self) -> list[CohortFinding]:
        return [c for c in self.cohorts if c.flagged]


def attribute(per_key: Sequence[KeyResult], *, alpha: float = 1e-3,
              ring: Any = None, accounts: Iterable[str] | None = None) -> Attribution:
    """Correct per-cohort p-values, flag cohorts, and narrow to accounts when possible.

    ``ring``: the watermark ``KeyRing`` (to map accounts to cohorts, server-side only);
    ``accounts``: the account names the store knows.
    """
    adjusted = holm([k.p_value for k in per_key])
    account_list = sorted(set(accounts)) if accounts is not None else None
    findings = []
    for k, adj in zip(per_key, adjusted):
        members = None
        if ring is not None and account_list is not None:
            key = ring.keys.get(k.key_id)
            if key is not None:
                members = [a for a in account_list if key.cohort_of(a) == k.cohort]
        findings.append(CohortFinding(k.key_id, k.cohort, k.p_value, adj, adj < alpha,
                                      members))
    flagged = [f for f in findings if f.flagged]
    candidates = None
    if flagged and all(f.accounts is not None for f in flagged):
        # Within one key id the suspect may have learned from several cohorts (several
        # harvesting accounts): union. Across key ids, an account must sit in a flagged
        # cohort of every key id that has one: intersection.
        by_key: dict[str, set[str]] = {}
        for f in flagged:
            by_key.setdefault(f.key_id, set()).update(f.accounts or [])
        sets = list(by_key.values())
        candidates = sorted(set.intersection(*sets)) if sets else []
    cohorts_per_key = max((getattr(k, "cohorts", 0) for k in (ring or [])), default=0)
    needed = None
    if candidates and cohorts_per_key:
        needed = max(rotations_needed(len(candidates), cohorts_per_key), 0)
    notes = [
        f"{len(per_key)} (key id, cohort) tests; Holm-corrected p-values, flagged below "
        f"alpha = {alpha:g}.",
    ]
    if candidates is not None and not candidates:
        notes.append(f"None of the {len(account_list or [])} accounts the store knows sits "
                     "in every flagged cohort: the outputs came through accounts of "
                     "another store, or accounts since deleted.")
    if needed is not None:
        notes.append(
            f"{len(candidates or [])} accounts share the flagged cohort(s); each key "
            f"rotation divides that by about {cohorts_per_key} if the suspect keeps "
            f"learning from their outputs: about {needed} more rotation(s) to narrow it "
            "to single accounts.")
    return Attribution(alpha, "holm", findings, candidates,
                       len(account_list) if account_list is not None else None, needed,
                       notes)
