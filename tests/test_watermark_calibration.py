"""Calibration: on human text the detector's p-values are honest across 1,000 keys.

Licence texts shipped with the machine and the environment, tokenised with the embedded
model's tokenizer (see ``watermark.calibration``). Keys x blocks of disjoint pairs give
independent null tests, so the number of p-values below alpha must lie within sampling
error of a binomial at rate alpha (discrete tests may undershoot alpha a little; they
must never exceed it).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from distillguard.watermark.calibration import calibrate, human_texts
from distillguard.watermark.schemes import get_scheme

# Tokenising ~220k tokens of licences and 1,000 keys per scheme: ~10 s on a quiet machine.
pytestmark = pytest.mark.slow

KEYS = 1000
TOLERANCE = 1e-4  # chance that a correct detector fails one bound


@pytest.fixture(scope="module")
def corpus_ids() -> list[np.ndarray]:
    from transformers import AutoTokenizer

    from distillguard.backends.model_cache import ensure_converted

    tok = AutoTokenizer.from_pretrained(str(ensure_converted()))
    texts = human_texts()
    assert len(texts) >= 20
    return [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


@pytest.mark.parametrize("name,params", [
    ("greenlist", {}),
    ("exponential", {}),
    # min-hash needs a second, per-key deduplication: a real bug this test once caught
    ("greenlist", {"gamma": 0.5, "context_width": 3, "seeding": "min"}),
])
def test_false_positive_rate_matches_alpha_on_human_text(corpus_ids, name, params):
    scheme = get_scheme(name, **params)
    result = calibrate(corpus_ids, scheme, keys=KEYS)
    assert result.p_values.shape[1] >= 10, "corpus too small for a meaningful calibration"
    for alpha in (1e-2, 1e-3):
        hits = result.hits(alpha)
        upper = stats.binom.isf(TOLERANCE, result.tests, alpha)
        # Discrete tests are conservative: allow an achieved size down to 0.7 alpha.
        lower = stats.binom.ppf(TOLERANCE, result.tests, 0.7 * alpha)
        assert lower <= hits <= upper, (
            f"{name} {params}: {hits} of {result.tests} p-values below {alpha} "
            f"(expected about {result.tests * alpha:.0f}, allowed {lower:.0f}..{upper:.0f})")
