"""False-positive rates of the detector on human text, over many keys.

The corpus is text that ships with the machine and the Python environment: the licences
in /usr/share/common-licenses and the licence files of installed packages. Licences
repeat themselves heavily, which is what the deduplication of (context, token) pairs
must handle.

The pairs of all documents are deduplicated together and split into blocks of disjoint
pairs, so under one key the blocks' tests are independent, and so are different keys.
The share of p-values below alpha over keys x blocks estimates the detector's
false-positive rate at alpha; the test suite and ``bench/watermark.py`` both use this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distillguard.watermark.detector import ScoredPairs, pair_scores
from distillguard.watermark.keyed import KeyedPartition, context_windows, first_occurrences
from distillguard.watermark.schemes import Scheme

LICENCE_DIR = Path("/usr/share/common-licenses")


def human_texts() -> list[str]:
    """Distinct licence texts found on this machine (decoded as UTF-8, lossy)."""
    paths = sorted(LICENCE_DIR.glob("*")) if LICENCE_DIR.is_dir() else []
    site = Path(sysconfig.get_paths()["purelib"])
    for pattern in ("*.dist-info/**/LICENSE*", "*.dist-info/**/COPYING*"):
        paths += sorted(site.glob(pattern))
    seen, texts = set(), []
    for path in paths:
        try:
            data = path.resolve().read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(data).digest()
        if digest not in seen and path.resolve().is_file():
            seen.add(digest)
            texts.append(data.decode("utf-8", "replace"))
    return texts


def pooled_pairs(docs: Sequence[np.ndarray], scheme: Scheme) -> ScoredPairs:
    """Scored pairs of all documents, deduplicated across the whole corpus."""
    parts = [context_windows(d, scheme.context_width) for d in docs]
    windows = np.concatenate([w for w, _ in parts])
    targets = np.concatenate([t for _, t in parts])
    keep = first_occurrences(windows, targets, scheme.seeding)
    return ScoredPairs(windows[keep], targets[keep], keep, len(targets), 0,
                       len(targets) - len(keep))


@dataclasses.dataclass
class Calibration:
    """p-values of ``keys`` x ``blocks`` independent null tests."""

    p_values: np.ndarray  # [keys, blocks]
    block_pairs: int

    @property
    def tests(self) -> int:
        return int(self.p_values.size)

    def hits(self, alpha: float) -> int:
        """How many p-values fall below ``alpha``."""
        return int((self.p_values < alpha).sum())

    def rate(self, alpha: float) -> float:
        """Share of p-values below ``alpha`` (the false-positive rate)."""
        return self.hits(alpha) / self.tests


def calibrate(docs: Sequence[np.ndarray], scheme: Scheme, *, keys: int = 1000,
              block_pairs: int = 1500, label: bytes = b"calibration") -> Calibration:
    """Null p-values of ``scheme`` on token-id documents under ``keys`` random keys."""
    pairs = pooled_pairs(docs, scheme)
    blocks = pairs.tokens_scored // block_pairs
    if blocks < 1:
        raise ValueError(f"corpus has only {pairs.tokens_scored} distinct pairs")
    end = blocks * block_pairs
    pairs = ScoredPairs(pairs.windows[:end], pairs.targets[:end], pairs.positions[:end],
                        end, 0, 0)
    starts = np.arange(blocks) * block_pairs
    p = np.empty((keys, blocks))
    for k in range(keys):
        seed = b"%s %s %d" % (label, scheme.name.encode(), k)
        part = KeyedPartition(hashlib.sha256(seed).digest())
        scores, counted = pair_scores(scheme, part, pairs)
        p[k] = scheme.p_values(np.add.reduceat(scores, starts),
                               np.add.reduceat(counted.astype(np.int64), starts))
    return Calibration(p, block_pairs)
