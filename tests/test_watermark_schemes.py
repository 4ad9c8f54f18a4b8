"""Every registered scheme: embeds a watermark its detector finds, respects the backend's
sampling contract, and has exact p-values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from distillguard.watermark import detector
from distillguard.watermark.base import RowSampler
from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.schemes import SCHEMES, GreenList, get_scheme
from distillguard.watermark.service import PlainSampler

VOCAB = 4000


def toy_logits(context: list[int]) -> torch.Tensor:
    """A fixed random 'language model': logits depend on the last two tokens."""
    g = torch.Generator().manual_seed(int(context[-1]) * 7919 + int(context[-2]) * 31 + 1)
    return torch.randn(VOCAB, generator=g) * 2.5


def generate(sampler: RowSampler, n: int = 200, seed: int = 0, greedy: bool = False,
             start: tuple[int, ...] = (11, 12, 13)) -> list[int]:
    ctx = list(start)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ctx.append(sampler.sample_row(np.array(ctx), toy_logits(ctx), greedy, g))
    return ctx[len(start):]


def candidates(scheme, *partitions):
    return [detector.Candidate(f"k{i}", 0, p) for i, p in enumerate(partitions)]


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_registered_scheme_loads_embeds_and_detects(name):
    scheme = get_scheme(name)
    assert scheme.name == name
    # params reproduce the scheme exactly (what request events record)
    assert get_scheme(name, **scheme.params).params == scheme.params
    key, other = KeyedPartition(b"a" * 32, VOCAB), KeyedPartition(b"b" * 32, VOCAB)
    sampler = scheme.sampler(key)
    assert isinstance(sampler, RowSampler)

    marked = generate(sampler, seed=1)
    found = detector.detect(marked, scheme, candidates(scheme, key))
    assert found["p_value"] < 1e-6
    assert found["tokens_scored"] > 100
    wrong_key = detector.detect(marked, scheme, candidates(scheme, other))
    assert wrong_key["p_value"] > 1e-3
    plain = detector.detect(generate(PlainSampler(), seed=1), scheme, candidates(scheme, key))
    assert plain["p_value"] > 1e-3
    for stat in ("p_value", "p_value_best_key", "z_score", "tokens_scored",
                 "tokens_ignored_repeated", scheme.statistic):
        assert stat in found


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_tokens_outside_top_p_are_never_chosen(name):
    sampler = get_scheme(name).sampler(KeyedPartition(b"c" * 32, VOCAB))
    g = torch.Generator().manual_seed(0)
    for step in range(50):
        logits = torch.full((VOCAB,), float("-inf"))
        allowed = torch.randperm(VOCAB, generator=g)[:3]
        logits[allowed] = torch.randn(3, generator=g)
        token = sampler.sample_row(np.array([5, step, step + 1]), logits, False, g)
        assert token in allowed.tolist()


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_greedy_requests_are_watermarked_too(name):
    """temperature 0 must not switch the watermark off."""
    scheme = get_scheme(name)
    key = KeyedPartition(b"d" * 32, VOCAB)
    tokens = generate(scheme.sampler(key), greedy=True)
    assert detector.detect(tokens, scheme, candidates(scheme, key))["p_value"] < 1e-4


def test_exponential_scheme_is_distortion_free_over_keys():
    """Over random keys the emitted token follows softmax(logits) exactly."""
    scheme = get_scheme("exponential")
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    logits = torch.log(probs)
    draws = 4000
    counts = np.zeros(len(probs))
    for i in range(draws):
        part = KeyedPartition(i.to_bytes(4, "little") * 8, len(probs))
        counts[scheme.sampler(part).sample_row(np.array([1, 2]), logits, False, None)] += 1
    chi2 = scipy.stats.chisquare(counts, probs.numpy() * draws)
    assert chi2.pvalue > 1e-3


def test_greenlist_bias_raises_green_share_and_strength_raises_it_more():
    key = KeyedPartition(b"e" * 32, VOCAB)
    base = get_scheme("greenlist")
    share = {}
    for strength in (1.0, 2.0):
        scheme = base.with_strength(strength)
        tokens = generate(scheme.sampler(key), n=300, seed=3)
        share[strength] = detector.detect(tokens, scheme, candidates(scheme, key))[
            "green_fraction"]
    assert 0.25 + 0.1 < share[1.0] < share[2.0]


def test_strength_below_one_is_refused():
    with pytest.raises(ValueError):
        get_scheme("greenlist", strength=0.5)


def test_greenlist_p_value_is_the_exact_binomial_tail():
    scheme = GreenList(gamma=0.25)
    counts = np.array([10, 50, 200, 200])
    greens = np.array([3, 20, 50, 90])
    expected = scipy.stats.binom.sf(greens - 1, counts, 0.25)
    np.testing.assert_allclose(scheme.p_values(greens, counts), expected, rtol=1e-9)


def test_exponential_p_value_is_the_exact_gamma_tail():
    scheme = get_scheme("exponential")
    sums, counts = np.array([3.0, 60.0, 260.0]), np.array([5, 50, 200])
    expected = scipy.stats.gamma.sf(sums, counts)
    np.testing.assert_allclose(scheme.p_values(sums, counts), expected, rtol=1e-9)


def test_unknown_scheme_names_the_registered_ones():
    with pytest.raises(ValueError, match="greenlist"):
        get_scheme("nope")


def test_plain_sampler_is_argmax_when_greedy_and_follows_the_generator():
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert PlainSampler().sample_row(np.array([1]), logits, True, None) == 1
    a = [PlainSampler().sample_row(np.array([1]), logits, False,
                                   torch.Generator().manual_seed(s)) for s in range(20)]
    b = [PlainSampler().sample_row(np.array([1]), logits, False,
                                   torch.Generator().manual_seed(s)) for s in range(20)]
    assert a == b and len(set(a)) > 1


def test_plain_sampler_draws_follow_the_softmax():
    probs = np.array([0.45, 0.3, 0.15, 0.1, 0.0])
    logits = torch.log(torch.tensor(probs, dtype=torch.float32))
    g = torch.Generator().manual_seed(3)
    draws = [PlainSampler().sample_row(np.array([1]), logits, False, g) for _ in range(8000)]
    counts = np.bincount(draws, minlength=5)
    assert counts[4] == 0
    assert scipy.stats.chisquare(counts[:4], probs[:4] * 8000).pvalue > 1e-3


def test_two_level_inverse_cdf_agrees_with_a_plain_cumsum_search():
    from distillguard.watermark.schemes import _inverse_cdf

    rng = np.random.default_rng(5)
    weights = rng.random(5000) * (rng.random(5000) < 0.3)  # many zero weights
    full = np.cumsum(weights)
    for u in np.concatenate([rng.random(2000), [0.0, 1 - 1e-12]]):
        expected = min(int(np.searchsorted(full, u * full[-1], side="right")), 4999)
        got, total = _inverse_cdf(weights, float(u))
        assert total == pytest.approx(full[-1])
        assert weights[got] > 0
        assert got == expected or abs(full[got] - full[expected]) < 1e-9


def test_exponential_race_is_deterministic_but_repeated_windows_sample_freshly():
    """A context window seen before is sampled with the generator, so text cannot loop."""
    from distillguard.watermark.schemes import _window_seen_before

    assert _window_seen_before(np.array([1, 2, 3, 9, 1, 2, 3]), 3)
    assert not _window_seen_before(np.array([1, 2, 3, 9, 2, 1, 3]), 3)
    assert not _window_seen_before(np.array([5, 5]), 0)

    # free_bits 0: no free prefix, every draw is the race (the prefix is tested below).
    sampler = get_scheme("exponential", context_width=2, free_bits=0).sampler(
        KeyedPartition(b"f" * 32, VOCAB))
    logits = torch.zeros(VOCAB)  # uniform: the plain draw varies with the generator

    def draws(context):
        return {sampler.sample_row(np.array(context), logits, False,
                                   torch.Generator().manual_seed(s)) for s in range(8)}

    assert len(draws([1, 2, 3, 4])) == 1  # fresh window: the keyed race decides
    assert len(draws([3, 4, 1, 3, 4])) > 1  # window (3, 4) seen before: plain sampling


def test_exponential_takes_its_own_context_width_setting(tmp_path):
    from distillguard.config import Settings
    from distillguard.watermark.service import scheme_from_settings

    settings = Settings.load(env={}, data_dir=str(tmp_path), watermark_scheme="exponential")
    assert scheme_from_settings(settings).context_width == 4
    assert scheme_from_settings(settings.replace(watermark_scheme="greenlist")).context_width == 1
