"""Radioactivity tests: did a suspect learn from text that carries our watermark?

Three tests, all scoring (context, token) tuples with the watermark package's keyed
partition and scheme (``distillguard.watermark``), never with a copy of it:

* ``blackbox_test``: the suspect's *outputs* (to prompts we choose, ideally the prompts
  the harvesting accounts sent). Tuples are deduplicated across all outputs together and
  tuples that occur in the prompts are dropped (a suspect that repeats the prompt must
  not score for it). With ``contexts`` (``context_fingerprints`` of the watermarked
  texts the suspect may have trained on) only tuples whose context occurs there are
  scored: Sander et al. 2024's filter, which keeps the tuples where a student can have
  learned our bias and drops the rest, which only add noise. Every remaining tuple has
  its own keyed value, so under the null (the suspect does not depend on our key) the
  sum of scores has the scheme's exact null distribution: one exact p-value per
  candidate key, Sidak-corrected over keys.
* ``reading_test`` without a reference: the suspect's argmax next-token predictions on
  texts *that do not carry our watermark*, deduplicated on (context, predicted token);
  exact null as above. On texts that do carry it the null fails: every model predicts
  the tokens it reads, which are green (the confound in ``MEASURED.md``).
* ``reading_test`` with a reference model (Sander et al. 2024's reading mode with a
  proper null): on our watermarked texts, compare the suspect's predictions with those
  of a reference model that never saw our outputs (its base model, or the embedded
  model). Tuples both predict are dropped; the rest form two disjoint sets of distinct
  tuples, and a one-sided Fisher exact test asks whether the suspect's hit rate exceeds
  the reference's. Assumption, stated in reports: without our data the suspect's
  predictions would be no more often green than the reference's.

Every test also computes its statistic under ``null_keys`` random keys that the server
never used, an empirical null drawn for the plots and as a cross-check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillguard.watermark.detector import Candidate, ScoredPairs, pair_scores, sidak
from distillguard.watermark.keyed import KeyedPartition, context_windows, fingerprints
from distillguard.watermark.schemes import Scheme

NULL_LABEL = b"distillguard/forensics/null-key"


@dataclasses.dataclass
class KeyResult:
    """One candidate key's test: named statistics, never key material."""

    key_id: str
    cohort: int
    p_value: float
    z_score: float | None
    tokens_scored: int
    hits: int | None = None
    hit_rate: float | None = None
    reference_hits: int | None = None
    reference_tokens_scored: int | None = None


@dataclasses.dataclass
class TestResult:
    """The outcome of one radioactivity test over all candidate keys."""

    test: str
    scheme: str
    params: dict[str, Any]
    p_value: float  # best key, Sidak-corrected for keys_tried
    p_value_best_key: float
    key_id: str | None
    cohort: int | None
    keys_tried: int
    tokens_total: int
    tokens_scored: int
    tokens_ignored_repeated: int
    tokens_ignored_prompt: int
    tokens_ignored_context: int
    per_key: list[KeyResult]
    null_z_scores: list[float]  # statistic under random keys (empirical null)
    documents: int
    notes: list[str]
    tokens_ignored_filter: int = 0  # black-box tuples whose context was filtered out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def empirical_p_value(self) -> float:
        """Share of random keys whose z-score reaches the best key's (add-one)."""
        best = max((k.z_score for k in self.per_key if k.z_score is not None), default=None)
        if best is None or not self.null_z_scores:
            return 1.0
        above = sum(z >= best for z in self.null_z_scores)
        return (above + 1) / (len(self.null_z_scores) + 1)


def null_partitions(count: int, vocab_size: int = 49_152) -> list[KeyedPartition]:
    """``count`` keyed partitions from public labels: keys the server never used."""
    return [KeyedPartition(hashlib.sha256(NULL_LABEL + b" %d" % i).digest(), vocab_size)
            for i in range(count)]


def _pairs_from(windows: list[np.ndarray], targets: list[np.ndarray], scheme: Scheme,
                exclude: np.ndarray | None, contexts: np.ndarray | None = None
                ) -> tuple[ScoredPairs, int, int, int]:
    """Deduplicate (window, target) tuples across documents; drop excluded fingerprints.

    With ``contexts``, keep only tuples whose window fingerprint is among them. Returns
    the pairs and how many were repeats, excluded, and outside ``contexts``.
    """
    width = scheme.context_width
    w = np.concatenate(windows) if windows else np.empty((0, width), np.int64)
    t = np.concatenate(targets) if targets else np.empty(0, np.int64)
    if len(t) == 0:
        return ScoredPairs(w, t, np.empty(0, np.int64), 0, 0, 0), 0, 0, 0
    fp = fingerprints(w, t, scheme.seeding)
    _, first = np.unique(fp, return_index=True)
    first.sort()
    repeated = len(t) - len(first)
    keep = first
    excluded = 0
    if exclude is not None and len(exclude):
        mask = ~np.isin(fp[first], exclude)
        excluded = int((~mask).sum())
        keep = first[mask]
    outside = 0
    if contexts is not None:
        inside = np.isin(_window_fingerprints(w[keep], scheme), contexts)
        outside = int((~inside).sum())
        keep = keep[inside]
    pairs = ScoredPairs(w[keep], t[keep], keep, len(t), 0, repeated)
    return pairs, repeated, excluded, outside


def prompt_fingerprints(prompts: Sequence[Sequence[int]], scheme: Scheme) -> np.ndarray:
    """Fingerprints of every (context, token) tuple inside the prompts."""
    parts = []
    for ids in prompts:
        w, t = context_windows(np.asarray(ids, np.int64), scheme.context_width)
        if len(t):
            parts.append(fingerprints(w, t, scheme.seeding))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)


def context_fingerprints(texts: Sequence[Sequence[int]], scheme: Scheme) -> np.ndarray:
    """Fingerprints of every context window in ``texts`` (the filter of ``blackbox_test``).

    A context's fingerprint is the key-independent tuple fingerprint of (window, -1):
    the placeholder target never occurs as a token, so context and tuple fingerprints
    never collide, and ``min`` seeding reduces the window to its set as for tuples.
    """
    parts = []
    for ids in texts:
        w, t = context_windows(np.asarray(ids, np.int64), scheme.context_width)
        if len(t):
            parts.append(_window_fingerprints(w, scheme))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)


def _window_fingerprints(windows: np.ndarray, scheme: Scheme) -> np.ndarray:
    return fingerprints(windows, np.full(len(windows), -1, np.int64), scheme.seeding)


def _score(scheme: Scheme, partition: KeyedPartition, pairs: ScoredPairs
           ) -> tuple[float, int]:
    if pairs.tokens_scored == 0:
        return 0.0, 0
    scores, counted = pair_scores(scheme, partition, pairs)
    return float(scores.sum()), int(counted.sum())


def _z(scheme: Scheme, total: float, count: int) -> float | None:
    z = float(scheme.z_scores(np.array([total]), np.array([count]))[0])
    return None if math.isnan(z) else z


def _key_result(scheme: Scheme, key_id: str, cohort: int, s: float, n: int) -> KeyResult:
    """One key's exact test from its summed score ``s`` over ``n`` scored tuples."""
    p = float(scheme.p_values(np.array([s]), np.array([n]))[0])
    hits = int(round(s)) if scheme.name == "greenlist" else None
    return KeyResult(key_id, cohort, p, _z(scheme, s, n), n, hits,
                     s / n if n and hits is not None else None)


def _null_z(scheme: Scheme, groups: Sequence[ScoredPairs], null_keys: int) -> list[float]:
    """The pooled statistic over ``groups`` under each of ``null_keys`` random keys."""
    null_z = []
    for part in null_partitions(null_keys):
        s, n = 0.0, 0
        for pairs in groups:
            gs, gn = _score(scheme, part, pairs)
            s += gs
            n += gn
        z = _z(scheme, s, n)
        if z is not None:
            null_z.append(z)
    return null_z


def _output_windows(outputs: Sequence[Sequence[int]], scheme: Scheme
                    ) -> tuple[list[np.ndarray], list[np.ndarray], int, int]:
    """Context windows and targets of each output; its tokens, and those without a
    full context (``tokens_ignored_context``)."""
    windows, targets = [], []
    total = ignored_context = 0
    for ids in outputs:
        ids = np.asarray(ids, np.int64)
        w, t = context_windows(ids, scheme.context_width)
        windows.append(w)
        targets.append(t)
        total += len(ids)
        ignored_context += len(ids) - len(t)
    return windows, targets, total, ignored_context


def _finish(test: str, scheme: Scheme, per_key: list[KeyResult], null_z: list[float],
            counts: dict[str, int], documents: int, notes: list[str]) -> TestResult:
    if not per_key:
        raise ValueError("no watermark key to test against")
    best = min(per_key, key=lambda k: k.p_value)
    return TestResult(
        test=test, scheme=scheme.name, params=scheme.params,
        p_value=sidak(best.p_value, len(per_key)), p_value_best_key=best.p_value,
        key_id=best.key_id if best.tokens_scored else None,
        cohort=best.cohort if best.tokens_scored else None,
        keys_tried=len(per_key), per_key=per_key, null_z_scores=null_z,
        documents=documents, notes=notes, **counts)


def blackbox_test(outputs: Sequence[Sequence[int]], scheme: Scheme,
                  candidates: Sequence[Candidate], *,
                  prompts: Sequence[Sequence[int]] = (), null_keys: int = 100,
                  contexts: np.ndarray | None = None) -> TestResult:
    """Score the suspect's outputs (token ids) as one pooled, deduplicated sample.

    ``contexts``: ``context_fingerprints`` of texts; when given, only tuples whose
    context occurs in them are scored (``tokens_ignored_filter`` counts the rest). The
    null stays exact as long as those texts were chosen without looking at the
    suspect's outputs: whether a context occurs in them does not change the keyed
    value of the token that follows it in the suspect's output.
    """
    windows, targets, total, ignored_context = _output_windows(outputs, scheme)
    exclude = prompt_fingerprints(prompts, scheme) if len(prompts) else None
    if contexts is not None:
        contexts = np.asarray(contexts, np.uint64)
    pairs, repeated, excluded, outside = _pairs_from(windows, targets, scheme, exclude,
                                                     contexts)
    per_key = [_key_result(scheme, c.key_id, c.cohort, *_score(scheme, c.partition, pairs))
               for c in candidates]
    null_z = _null_z(scheme, [pairs], null_keys)
    counts = dict(tokens_total=total, tokens_scored=pairs.tokens_scored,
                  tokens_ignored_repeated=repeated, tokens_ignored_prompt=excluded,
                  tokens_ignored_context=ignored_context, tokens_ignored_filter=outside)
    notes = [
        "Black-box test: the suspect's outputs are tokenised with our tokenizer; every "
        f"(previous {scheme.context_width} tokens, token) tuple is scored once across all "
        "outputs, and tuples that occur in the prompts are not scored.",
        f"Under the null (the suspect's outputs do not depend on our key) the summed "
        f"score has the {scheme.name} scheme's exact null distribution; the p-value is "
        "its exact upper tail, Sidak-corrected for the number of keys and cohorts tried.",
    ]
    if contexts is not None:
        notes.append(
            f"Filter (Sander et al. 2024): only tuples whose context occurs in "
            f"{len(contexts)} distinct contexts of the watermarked texts the suspect may "
            f"have trained on were scored ({outside} tuples outside them were not).")
    return _finish("blackbox", scheme, per_key, null_z, counts, len(outputs), notes)


def supervised_test(outputs: Sequence[Sequence[int]], assigned: Sequence[Candidate],
                    scheme: Scheme, *, prompts: Sequence[Sequence[int]] = (),
                    null_keys: int = 100, contexts: np.ndarray | None = None) -> TestResult:
    """Black-box, supervised: score each output under the key that watermarked the
    answers to its prompt, as our logs record it (``assigned[i]`` for ``outputs[i]``).

    The keys are fixed by the logs before the suspect is queried, so nothing is searched
    and nothing needs correcting; each output adds its evidence to one pooled statistic
    instead of being split across the cohort keys of several harvesting accounts.
    Tuples are deduplicated within each key (the same tuple under two keys is two
    independent draws under the null), prompt tuples are excluded, and ``contexts``
    filters as in ``blackbox_test``. Under the null the pooled score has the scheme's
    exact null distribution: one exact p-value.
    """
    if len(assigned) != len(outputs):
        raise ValueError("supervised_test needs one assigned key per output")
    exclude = prompt_fingerprints(prompts, scheme) if len(prompts) else None
    if contexts is not None:
        contexts = np.asarray(contexts, np.uint64)
    by_key: dict[tuple[str, int], list[int]] = {}
    for i, cand in enumerate(assigned):
        by_key.setdefault((cand.key_id, cand.cohort), []).append(i)
    per_key, groups = [], []
    counts = dict(tokens_total=0, tokens_scored=0, tokens_ignored_repeated=0,
                  tokens_ignored_prompt=0, tokens_ignored_context=0, tokens_ignored_filter=0)
    total_s, total_n = 0.0, 0
    for (key_id, cohort), idx in by_key.items():
        windows, targets, total, ignored_context = _output_windows(
            [outputs[i] for i in idx], scheme)
        counts["tokens_total"] += total
        counts["tokens_ignored_context"] += ignored_context
        pairs, repeated, excluded, outside = _pairs_from(windows, targets, scheme, exclude,
                                                         contexts)
        counts["tokens_scored"] += pairs.tokens_scored
        counts["tokens_ignored_repeated"] += repeated
        counts["tokens_ignored_prompt"] += excluded
        counts["tokens_ignored_filter"] += outside
        part = assigned[idx[0]].partition
        s, n = _score(scheme, part, pairs)
        total_s += s
        total_n += n
        groups.append(pairs)
        per_key.append(_key_result(scheme, key_id, cohort, s, n))
    null_z = _null_z(scheme, groups, null_keys)
    p = float(scheme.p_values(np.array([total_s]), np.array([total_n]))[0])
    main = max(per_key, key=lambda k: k.tokens_scored) if per_key else None
    notes = [
        "Supervised black-box test: the suspect was asked the prompts our logs show the "
        "harvesting accounts sent, and each answer is scored under the key (key id and "
        "cohort) that watermarked our answers to that prompt. The keys come from the logs, "
        "not from a search, so the p-value needs no correction.",
        f"Every (previous {scheme.context_width} tokens, token) tuple is scored once per "
        "key; tuples that occur in the prompts are not scored. Under the null the pooled "
        f"score has the {scheme.name} scheme's exact null distribution.",
    ]
    if contexts is not None:
        notes.append(f"Filter (Sander et al. 2024): only tuples whose context occurs in "
                     f"{len(contexts)} distinct contexts of our watermarked texts were scored.")
    if main is None:
        raise ValueError("no output to test")
    return TestResult(
        test="supervised", scheme=scheme.name, params=scheme.params, p_value=p,
        p_value_best_key=p, key_id=main.key_id if total_n else None,
        cohort=main.cohort if total_n else None, keys_tried=1, per_key=per_key,
        null_z_scores=null_z, documents=len(outputs), notes=notes, **counts)


def _hits(scheme: Scheme, partition: KeyedPartition, windows: np.ndarray,
          targets: np.ndarray) -> np.ndarray:
    """Boolean: the token's keyed score is above the null median (green for greenlist)."""
    if len(targets) == 0:
        return np.zeros(0, bool)
    pairs = ScoredPairs(windows, targets, np.arange(len(targets)), len(targets), 0, 0)
    scores, counted = pair_scores(scheme, partition, pairs)
    cut = 0.5 if scheme.name == "greenlist" else math.log(2.0)
    return (scores > cut) & counted


def _unique_tuples(windows: np.ndarray, targets: np.ndarray, scheme: Scheme
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fp = fingerprints(windows, targets, scheme.seeding)
    _, first = np.unique(fp, return_index=True)
    first.sort()
    return windows[first], targets[first], fp[first]


def reading_test(texts: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]],
                 scheme: Scheme, candidates: Sequence[Candidate], *,
                 reference: Sequence[Sequence[int]] | None = None,
                 null_keys: int = 100) -> TestResult:
    """Score a suspect's argmax predictions on ``texts`` (reading mode).

    ``predictions[d][i]`` is the suspect's most likely token after ``texts[d][:i + 1]``
    (what a causal LM's logits at position ``i`` give). ``reference``: the same from a
    reference model; required for a valid test on texts that carry our watermark.
    """
    from scipy import stats

    h = scheme.context_width
    ws, ts, rs = [], [], []
    total = 0
    for d, ids in enumerate(texts):
        ids = np.asarray(ids, np.int64)
        pred = np.asarray(predictions[d], np.int64)
        if len(pred) != len(ids):
            raise ValueError("predictions must have one entry per text token")
        total += len(ids)
        if len(ids) < h or len(ids) < 1:
            continue
        # The window ending at position i (inclusive) predicts the token after it.
        windows, _ = context_windows(np.concatenate([ids, [0]]), h)
        ws.append(windows)
        ts.append(pred[h - 1:] if h else pred)
        if reference is not None:
            ref = np.asarray(reference[d], np.int64)
            rs.append(ref[h - 1:] if h else ref)
        if h == 0:
            ws[-1] = ws[-1][: len(pred)]
    windows = np.concatenate(ws) if ws else np.empty((0, h), np.int64)
    targets = np.concatenate(ts) if ts else np.empty(0, np.int64)
    per_key: list[KeyResult] = []
    null_z: list[float] = []
    if reference is None:
        pairs, repeated, _, _ = _pairs_from([windows], [targets], scheme, None)
        per_key = [_key_result(scheme, c.key_id, c.cohort,
                               *_score(scheme, c.partition, pairs)) for c in candidates]
        null_z = _null_z(scheme, [pairs], null_keys)
        counts = dict(tokens_total=total, tokens_scored=pairs.tokens_scored,
                      tokens_ignored_repeated=repeated, tokens_ignored_prompt=0,
                      tokens_ignored_context=total - len(targets))
        notes = ["Reading mode against the scheme's exact null: the suspect's argmax "
                 "predictions on the texts, each (context, predicted token) tuple once. "
                 "Valid only when the texts do not carry our watermark."]
        return _finish("reading", scheme, per_key, null_z, counts, len(texts), notes)

    ref_targets = np.concatenate(rs) if rs else np.empty(0, np.int64)
    sw, st, sfp = _unique_tuples(windows, targets, scheme)
    rw, rt, rfp = _unique_tuples(windows, ref_targets, scheme)
    # Tuples both models predict say nothing about a difference between them.
    s_only = ~np.isin(sfp, rfp)
    r_only = ~np.isin(rfp, sfp)
    sw, st = sw[s_only], st[s_only]
    rw, rt = rw[r_only], rt[r_only]

    def compare(part: KeyedPartition) -> tuple[int, int, int, int, float, float | None]:
        a = int(_hits(scheme, part, sw, st).sum())
        b = int(_hits(scheme, part, rw, rt).sum())
        n1, n2 = len(st), len(rt)
        if n1 == 0 or n2 == 0:
            return a, n1, b, n2, 1.0, None
        p = float(stats.fisher_exact([[a, n1 - a], [b, n2 - b]], alternative="greater")[1])
        pooled = (a + b) / (n1 + n2)
        var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
        z = (a / n1 - b / n2) / math.sqrt(var) if var > 0 else None
        return a, n1, b, n2, p, z

    for c in candidates:
        a, n1, b, n2, p, z = compare(c.partition)
        per_key.append(KeyResult(c.key_id, c.cohort, p, z, n1, a, a / n1 if n1 else None,
                                 b, n2))
    for part in null_partitions(null_keys):
        z = compare(part)[5]
        if z is not None:
            null_z.append(z)
    counts = dict(tokens_total=total, tokens_scored=len(st) + len(rt),
                  tokens_ignored_repeated=(len(targets) - len(sfp)) + (len(ref_targets)
                                                                      - len(rfp)),
                  tokens_ignored_prompt=0,
                  tokens_ignored_context=total - len(targets))
    notes = [
        "Reading mode with a reference model (Sander et al. 2024, with a proper null): the "
        "suspect's and the reference's argmax predictions on the same texts; each "
        "model's (context, predicted token) tuples once; tuples both predict dropped.",
        "One-sided Fisher exact test: is the suspect's share of tokens that score above "
        "the null median (green tokens for greenlist) larger than the reference's? "
        "Assumes that without our data the suspect would be no greener than the "
        "reference; scoring against the green share alone is confounded on "
        "watermarked texts, because every model predicts the green tokens it reads.",
    ]
    return _finish("reading_vs_reference", scheme, per_key, null_z, counts, len(texts), notes)

