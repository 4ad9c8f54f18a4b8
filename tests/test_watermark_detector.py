"""The keyed function shared by sampler and detector, deduplication, corrections."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.watermark import detector
from distillguard.watermark.keyed import (
    KeyedPartition,
    context_windows,
    first_occurrences,
    mix64,
    threshold,
)
from distillguard.watermark.schemes import get_scheme


def test_sampler_row_and_detector_pairs_are_the_same_function():
    part = KeyedPartition(b"k" * 32)
    windows = np.array([[17, 4], [4, 99]])
    for seeding in ("left", "min"):
        seeds = part.context_seeds(windows, seeding)
        for seed in seeds:
            row = part.row_values(seed, 1000)
            tokens = np.arange(1000)
            np.testing.assert_array_equal(
                row, part.values(np.full(1000, seed, np.uint64), tokens))


def test_table_is_prefix_stable_when_the_vocabulary_grows():
    small = KeyedPartition(b"q" * 32, vocab_size=100)
    big = KeyedPartition(b"q" * 32, vocab_size=200_000)
    np.testing.assert_array_equal(small.table(200_000)[:5000], big.table(5000))


def test_min_seeding_ignores_order_and_left_seeding_does_not():
    part = KeyedPartition(b"m" * 32)
    a, b = np.array([[1, 2, 3]]), np.array([[3, 1, 2]])
    assert part.context_seeds(a, "min")[0] == part.context_seeds(b, "min")[0]
    assert part.context_seeds(a, "left")[0] != part.context_seeds(b, "left")[0]


def test_keyed_values_are_uniform_and_key_dependent():
    tokens = np.arange(200_000) % 49_152
    seeds = np.repeat(np.arange(20, dtype=np.uint64), 10_000)
    v1 = KeyedPartition(b"1" * 32).values(seeds, tokens)
    v2 = KeyedPartition(b"2" * 32).values(seeds, tokens)
    green = v1 < threshold(0.25)
    assert abs(green.mean() - 0.25) < 0.005
    assert abs((green == (v2 < threshold(0.25))).mean() - 0.625) < 0.01  # independent


def test_mix64_is_a_bijection_on_a_sample():
    x = np.arange(200_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    assert len(np.unique(mix64(x))) == len(x)


@pytest.mark.parametrize("seeding", ["left", "min"])
def test_repeated_context_token_pairs_are_scored_once(seeding):
    ids = np.array([5, 6, 7, 5, 6, 7, 5, 6, 7, 8])
    windows, targets = context_windows(ids, 2)
    keep = first_occurrences(windows, targets, seeding)
    # distinct (window, target): (5,6)->7, (6,7)->5, (7,5)->6, (6,7)->8 ; with min
    # seeding (7,5) and (5,7) would be the same set, but (5,7) does not occur here.
    assert list(keep) == [0, 1, 2, 7]


def test_min_seeding_dedups_windows_with_the_same_set():
    ids = np.array([1, 2, 9, 2, 1, 9])  # (1,2)->9 and (2,1)->9: same set, same target
    windows, targets = context_windows(ids, 2)
    assert len(first_occurrences(windows, targets, "min")) == 3
    assert len(first_occurrences(windows, targets, "left")) == 4


def test_repetitive_text_does_not_look_watermarked():
    """A text repeated many times holds no more evidence than one copy."""
    scheme = get_scheme("greenlist")
    keys = [detector.Candidate("k", 0, KeyedPartition(i.to_bytes(2, "little") * 16))
            for i in range(50)]
    rng = np.random.default_rng(0)
    once = rng.integers(0, 49_152, 40)
    many = np.tile(once, 200)
    result = detector.detect(many, scheme, keys)
    assert result["tokens_scored"] == 40
    assert result["tokens_ignored_repeated"] == len(many) - 1 - 40
    # with 50 keys, the corrected p-value of an unwatermarked text is not small
    assert result["p_value"] > 0.01


def test_corrected_p_value_accounts_for_every_key_tried():
    assert detector.sidak(0.01, 1) == 0.01
    assert detector.sidak(0.01, 16) == pytest.approx(1 - 0.99**16)
    assert detector.sidak(1e-20, 16) == pytest.approx(16e-20)
    assert detector.sidak(1.0, 16) == 1.0


def test_empty_and_too_short_inputs_have_p_value_one():
    scheme = get_scheme("greenlist", context_width=2)
    keys = [detector.Candidate("k", 0, KeyedPartition(b"z" * 32))]
    for ids in ([], [5], [5, 6]):
        result = detector.detect(ids, scheme, keys)
        assert result["p_value"] == 1.0 and result["tokens_scored"] == 0
        assert result["z_score"] is None and result["key_id"] is None


def test_prefix_p_values_match_detection_of_each_prefix():
    scheme = get_scheme("exponential")
    part = KeyedPartition(b"p" * 32)
    ids = np.random.default_rng(1).integers(0, 300, 120)
    prefix = detector.prefix_p_values(ids, scheme, part)
    for end in (10, 57, 120):
        single = detector.detect(ids[:end], scheme, [detector.Candidate("k", 0, part)])
        assert prefix[end - 1] == pytest.approx(single["p_value"], rel=1e-9)


def test_min_seeding_survives_most_single_token_edits_in_the_window():
    part = KeyedPartition(b"r" * 32)
    rng = np.random.default_rng(2)
    windows = rng.integers(0, 49_152, (5000, 4))
    edited = windows.copy()
    edited[np.arange(5000), rng.integers(0, 4, 5000)] = rng.integers(0, 49_152, 5000)
    same = {s: (part.context_seeds(windows, s) == part.context_seeds(edited, s)).mean()
            for s in ("left", "min")}
    assert same["left"] < 0.01
    assert 0.45 < same["min"] < 0.65  # unchanged unless the edit removes or undercuts the min
