"""Radioactivity tests on fast fakes: convict what learned from our key, clear the rest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from distillguard.forensics.attribution import attribute, holm, rotations_needed
from distillguard.forensics.radioactivity import (
    blackbox_test,
    context_fingerprints,
    reading_test,
)
from distillguard.watermark.detector import Candidate
from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.keys import WatermarkKey
from distillguard.watermark.schemes import get_scheme

VOCAB = 2000  # token ids used by the fakes; the partition itself spans the full vocab


def key(label: str) -> KeyedPartition:
    return KeyedPartition(hashlib.sha256(label.encode()).digest())


class BigramModel:
    """A fake language model: a fixed random bigram table, optionally tilted to green.

    ``tilt`` > 0 adds that much to the logits of tokens green under ``partition`` after
    each context: what a student learns from watermarked outputs.
    """

    def __init__(self, seed: int, partition: KeyedPartition | None = None,
                 tilt: float = 0.0, scheme=None) -> None:
        rng = np.random.default_rng(seed)
        self.logits = rng.gumbel(size=(VOCAB, VOCAB)) * 1.5
        if partition is not None and tilt:
            seeds = partition.context_seeds(np.arange(VOCAB).reshape(-1, 1))
            for prev in range(VOCAB):
                green = scheme.green_mask(partition, seeds[prev], VOCAB)
                self.logits[prev, green] += tilt

    def sample(self, n: int, length: int, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            ids = [int(rng.integers(VOCAB))]
            for _ in range(length - 1):
                row = self.logits[ids[-1]]
                p = np.exp(row - row.max())
                ids.append(int(rng.choice(VOCAB, p=p / p.sum())))
            out.append(np.array(ids))
        return out

    def predictions(self, texts):
        return [self.logits[np.asarray(t)].argmax(axis=1) for t in texts]


SCHEME = get_scheme("greenlist", gamma=0.25, delta=2.0)


@pytest.fixture(scope="module")
def ours():
    return [Candidate("wk1", c, key(f"ours-{c}")) for c in range(4)]


def test_blackbox_convicts_a_student_tilted_to_our_key_and_names_its_cohort(ours):
    student = BigramModel(1, ours[2].partition, tilt=1.0, scheme=SCHEME)
    result = blackbox_test(student.sample(20, 60, seed=0), SCHEME, ours, null_keys=20)
    assert result.p_value < 1e-6
    assert result.cohort == 2 and result.key_id == "wk1"
    assert result.keys_tried == 4
    # The empirical null under keys the server never used stays near z = 0.
    assert abs(float(np.mean(result.null_z_scores))) < 1.0


def test_blackbox_clears_a_clean_student(ours):
    clean = BigramModel(1)
    result = blackbox_test(clean.sample(20, 60, seed=0), SCHEME, ours, null_keys=0)
    assert result.p_value > 1e-3


def test_repeated_tuples_are_scored_once_across_outputs(ours):
    text = np.arange(50)
    once = blackbox_test([text], SCHEME, ours, null_keys=0)
    thrice = blackbox_test([text, text, text], SCHEME, ours, null_keys=0)
    assert thrice.tokens_scored == once.tokens_scored == 49
    assert thrice.tokens_ignored_repeated == 2 * 49
    assert thrice.p_value == once.p_value


def test_tuples_copied_from_the_prompt_are_not_scored(ours):
    # Green text, as if our watermarked answer were pasted into the prompt and echoed.
    teacher = BigramModel(3, ours[0].partition, tilt=6.0, scheme=SCHEME)
    echoed = teacher.sample(10, 60, seed=1)
    with_prompt = blackbox_test(echoed, SCHEME, ours, prompts=echoed, null_keys=0)
    without = blackbox_test(echoed, SCHEME, ours, null_keys=0)
    assert without.p_value < 1e-10
    assert with_prompt.tokens_scored == 0 and with_prompt.p_value == 1.0
    assert with_prompt.tokens_ignored_prompt == without.tokens_scored


def test_clean_students_p_values_are_uniform_across_seeds_and_keys():
    """No false accusation: over many keys and student seeds, p-values are U(0, 1)."""
    p_values = []
    for seed in range(6):
        outputs = BigramModel(100 + seed).sample(6, 80, seed=seed)
        for k in range(60):
            cand = [Candidate("k", 0, key(f"uniform-{seed}-{k}"))]
            p_values.append(blackbox_test(outputs, SCHEME, cand, null_keys=0).p_value)
    p_values = np.array(p_values)
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3
    assert (p_values < 0.01).mean() < 0.01 + 3 * np.sqrt(0.01 / len(p_values))


def test_context_filter_keeps_only_tuples_whose_context_the_student_saw(ours):
    harvested = [np.array([5, 6, 7, 8])]
    outputs = [np.array([5, 9, 7, 8, 100, 101])]
    result = blackbox_test(outputs, SCHEME, ours, null_keys=0,
                           contexts=context_fingerprints(harvested, SCHEME))
    # Contexts 5, 6, 7 are followed by a token in the harvested text; 9, 8, 100 are not.
    assert result.tokens_scored == 2
    assert result.tokens_ignored_filter == 3
    assert any("Filter" in n for n in result.notes)


def test_context_filter_from_watermarked_texts_keeps_the_null_uniform():
    """No false accusation with the filter: the contexts come from text that carries the
    key, the suspect never learned from it; p-values stay U(0, 1) over seeds and keys."""
    p_values = []
    clean = [BigramModel(200 + m) for m in range(3)]
    for k in range(4):
        cand = [Candidate("k", 0, key(f"filter-{k}"))]
        harvested = BigramModel(300 + k, cand[0].partition, tilt=4.0,
                                scheme=SCHEME).sample(10, 80, seed=k)
        contexts = context_fingerprints(harvested, SCHEME)
        for model in clean:
            for seed in range(8):
                outputs = model.sample(3, 80, seed=seed)
                p_values.append(blackbox_test(outputs, SCHEME, cand, null_keys=0,
                                              contexts=contexts).p_value)
    p_values = np.array(p_values)
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3
    assert (p_values < 0.01).mean() < 0.01 + 3 * np.sqrt(0.01 / len(p_values))


def test_context_filter_sharpens_a_student_that_learned_only_the_harvested_contexts(ours):
    teacher = BigramModel(13, ours[0].partition, tilt=4.0, scheme=SCHEME)
    harvested = teacher.sample(3, 40, seed=4)
    seen = np.unique(np.concatenate([h[:-1] for h in harvested]))
    # The student's bias exists only after contexts it read: elsewhere it is clean.
    student = BigramModel(14)
    student.logits[seen] = BigramModel(14, ours[0].partition, tilt=1.5,
                                       scheme=SCHEME).logits[seen]
    outputs = student.sample(20, 60, seed=5)
    plain = blackbox_test(outputs, SCHEME, ours, null_keys=0)
    filtered = blackbox_test(outputs, SCHEME, ours, null_keys=0,
                             contexts=context_fingerprints(harvested, SCHEME))
    assert filtered.tokens_scored < plain.tokens_scored
    assert filtered.p_value < plain.p_value


def test_reading_mode_against_a_reference_convicts_and_clears(ours):
    base = BigramModel(7)
    tilted = BigramModel(7, ours[1].partition, tilt=1.5, scheme=SCHEME)
    # Texts that carry our watermark: the confounded setting of MEASURED.md.
    texts = BigramModel(9, ours[1].partition, tilt=4.0, scheme=SCHEME).sample(30, 60, 2)
    ref = base.predictions(texts)
    guilty = reading_test(texts, tilted.predictions(texts), SCHEME, ours, reference=ref,
                          null_keys=10)
    assert guilty.p_value < 1e-6 and guilty.cohort == 1
    innocent = reading_test(texts, BigramModel(8).predictions(texts), SCHEME, ours,
                            reference=ref, null_keys=0)
    assert innocent.p_value > 1e-3


def test_reading_mode_without_reference_has_an_exact_null_on_clean_texts(ours):
    texts = BigramModel(11).sample(30, 60, 3)
    clean = reading_test(texts, BigramModel(12).predictions(texts), SCHEME, ours,
                         null_keys=0)
    assert clean.p_value > 1e-3
    guilty = reading_test(texts, BigramModel(12, ours[3].partition, tilt=2.0,
                                             scheme=SCHEME).predictions(texts),
                          SCHEME, ours, null_keys=0)
    assert guilty.p_value < 1e-6 and guilty.cohort == 3


def test_exponential_scheme_runs_through_the_same_tests():
    scheme = get_scheme("exponential")
    cands = [Candidate("wk1", 0, key("exp"))]
    result = blackbox_test(BigramModel(5).sample(5, 50, 0), scheme, cands, null_keys=5)
    assert 0.0 < result.p_value <= 1.0 and result.tokens_scored > 0


def test_holm_and_rotations():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert rotations_needed(1, 16) == 0
    assert rotations_needed(16, 16) == 1
    assert rotations_needed(1000, 16) == 3


def test_attribution_names_the_accounts_of_the_flagged_cohort(ours):
    class Ring:
        def __init__(self):
            self.keys = {"wk1": WatermarkKey("wk1", b"s" * 32, 0.0, 4)}

        def __iter__(self):
            return iter(self.keys.values())

    ring = Ring()
    accounts = [f"acct-{i}" for i in range(40)]
    target = ring.keys["wk1"].cohort_of("acct-7")
    student = BigramModel(1, ours[target].partition, tilt=1.0, scheme=SCHEME)
    result = blackbox_test(student.sample(20, 60, seed=0), SCHEME, ours, null_keys=0)
    found = attribute(result.per_key, alpha=1e-3, ring=ring, accounts=accounts)
    assert [f.cohort for f in found.flagged] == [target]
    assert "acct-7" in found.candidate_accounts
    assert len(found.candidate_accounts) < len(accounts)
    assert found.rotations_needed == rotations_needed(len(found.candidate_accounts), 4)


def test_supervised_test_pools_two_cohorts_and_stays_calibrated(ours):
    """A student tilted towards two cohorts' keys, half its answers each: scoring each
    answer under the key our logs name beats searching the keys one at a time."""
    from distillguard.forensics.radioactivity import supervised_test

    half_a = BigramModel(3, ours[1].partition, tilt=0.35, scheme=SCHEME).sample(12, 50, 1)
    half_b = BigramModel(3, ours[3].partition, tilt=0.35, scheme=SCHEME).sample(12, 50, 2)
    outputs = half_a + half_b
    assigned = [ours[1]] * 12 + [ours[3]] * 12
    pooled = supervised_test(outputs, assigned, SCHEME, null_keys=10)
    searched = blackbox_test(outputs, SCHEME, ours, null_keys=10)
    assert pooled.test == "supervised" and pooled.keys_tried == 1
    assert {k.cohort for k in pooled.per_key} == {1, 3}
    assert pooled.p_value < searched.p_value
    # No false accusation: clean outputs under assigned keys give uniform p-values.
    clean = BigramModel(9)
    ps = [supervised_test(clean.sample(6, 40, seed=s),
                          [Candidate("wk1", c % 4, key(f"null-{s}-{c % 4}")) for c in range(6)],
                          SCHEME, null_keys=0).p_value for s in range(60)]
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    with pytest.raises(ValueError):
        supervised_test(outputs, assigned[:3], SCHEME)
