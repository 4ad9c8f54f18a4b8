"""Detection: score token ids under one or many keys and name every statistic.

The work that does not depend on the key (context windows, dropping repeated
(context, token) pairs) happens once per text; each candidate key then costs one gather
and one ``mix64`` pass over the scored pairs. When several keys (key ids x cohorts) are
tried, the smallest p-value is corrected for the number tried (Sidak: the tests are
independent under the null because the keyed values of different keys are).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillguard.watermark.keyed import (
    KeyedPartition,
    context_windows,
    first_occurrences,
    seeded_duplicates,
)
from distillguard.watermark.schemes import Scheme


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One key to try: its public id, cohort, and keyed function."""

    key_id: str
    cohort: int
    partition: KeyedPartition


@dataclasses.dataclass(frozen=True)
class ScoredPairs:
    """The key-independent part of detection for one token sequence."""

    windows: np.ndarray  # [n, h] context of each scored pair
    targets: np.ndarray  # [n]
    positions: np.ndarray  # [n] index of each target in the original sequence
    tokens_total: int
    tokens_ignored_context: int
    tokens_ignored_repeated: int

    @property
    def tokens_scored(self) -> int:
        return len(self.targets)


def prepare(ids: Sequence[int] | np.ndarray, scheme: Scheme) -> ScoredPairs:
    """Context windows of ``ids`` with repeated (context, token) pairs dropped."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    windows, targets = context_windows(ids, scheme.context_width)
    keep = first_occurrences(windows, targets, scheme.seeding)
    return ScoredPairs(
        windows=windows[keep], targets=targets[keep],
        positions=keep + scheme.context_width,
        tokens_total=len(ids),
        tokens_ignored_context=len(ids) - len(targets),
        tokens_ignored_repeated=len(targets) - len(keep),
    )


def pair_scores(scheme: Scheme, partition: KeyedPartition,
                pairs: ScoredPairs) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair contributions under one key, and which pairs count (both ``[n]``).

    Under ``min`` seeding with a window above 1, windows that share their minimum token
    share a seed, so pairs are deduplicated again on (seed, token) for this key;
    dropped pairs contribute 0 and do not count.
    """
    seeds = partition.context_seeds(pairs.windows, scheme.seeding)
    scores = scheme.token_scores(partition.values(seeds, pairs.targets))
    if scheme.seeding == "min" and scheme.context_width > 1:
        counted = ~seeded_duplicates(seeds, pairs.targets)
        scores[~counted] = 0.0
    else:
        counted = np.ones(len(scores), dtype=bool)
    return scores, counted


def sidak(p_best: float, tests: int) -> float:
    """P(min of ``tests`` independent null p-values <= p_best)."""
    if tests <= 1 or p_best >= 1.0:
        return min(p_best, 1.0)
    return -math.expm1(tests * math.log1p(-p_best))


def detect(ids: Sequence[int] | np.ndarray, scheme: Scheme,
           candidates: Sequence[Candidate]) -> dict[str, Any]:
    """Test ``ids`` under every candidate key; report the best one, corrected.

    Returns ``p_value`` (corrected for the number of keys tried), ``p_value_best_key``
    (uncorrected), ``z_score``, the scheme's own statistic, token counts, and the key id
    and cohort of the best key.
    """
    if not candidates:
        raise ValueError("no watermark key to test against")
    pairs = prepare(ids, scheme)
    sums = np.zeros(len(candidates))
    counts = np.zeros(len(candidates), dtype=np.int64)
    if pairs.tokens_scored:
        for i, c in enumerate(candidates):
            scores, counted = pair_scores(scheme, c.partition, pairs)
            sums[i], counts[i] = scores.sum(), counted.sum()
    p = scheme.p_values(sums, counts)
    best = int(np.argmin(p))
    n = int(counts[best])
    result: dict[str, Any] = {
        "scheme": scheme.name,
        "params": scheme.params,
        "p_value": sidak(float(p[best]), len(candidates)),
        "p_value_best_key": float(p[best]),
    }
    stats = scheme.describe(float(sums[best]), n)
    stats.pop("p_value")
    result.update(stats)
    result.update(
        tokens_total=pairs.tokens_total,
        tokens_scored=n,
        tokens_ignored_repeated=pairs.tokens_total - pairs.tokens_ignored_context - n,
        tokens_ignored_context=pairs.tokens_ignored_context,
        key_id=candidates[best].key_id if n else None,
        cohort=candidates[best].cohort if n else None,
        keys_tried=len(candidates),
        correction="sidak" if len(candidates) > 1 else "none",
    )
    return result


def prefix_p_values(ids: Sequence[int] | np.ndarray, scheme: Scheme,
                    partition: KeyedPartition) -> np.ndarray:
    """p-value under one key of every prefix: entry ``i`` covers ``ids[:i + 1]``.

    Repeated pairs count at their first occurrence only, as in ``detect``.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    pairs = prepare(ids, scheme)
    contrib = np.zeros(len(ids))
    counts = np.zeros(len(ids))
    if pairs.tokens_scored:
        scores, counted = pair_scores(scheme, partition, pairs)
        contrib[pairs.positions] = scores
        counts[pairs.positions] = counted
    return scheme.p_values(np.cumsum(contrib), np.cumsum(counts).astype(np.int64))
