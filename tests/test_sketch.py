"""The prompt-distribution test: an unbiased MMD from a fixed-size sketch that pools."""

from __future__ import annotations

import numpy as np

from distillguard.detection.builtin import MIN_SKETCH_PROMPTS, PromptDistributionSignal
from distillguard.detection.embedder import CachedEmbedder, prompt_digest
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.sketch import build_reference, load_reference
from distillguard.telemetry.events import RequestEvent

DIM = 32
T0 = 1_700_000_000.0


def clusters(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def state_of(signal: PromptDistributionSignal, ref, x: np.ndarray) -> list:
    state = signal.new_state()
    for row in x:
        ext = ref.extended(row)
        state[1] = ext if state[1] is None else state[1] + ext
        state[0] += 1
    return state


def _world(rng, n_centres, n_reference):
    """Cluster centres, a reference built from them, and the signal reading it."""
    centres = rng.standard_normal((n_centres, DIM))
    ref = build_reference(clusters(rng, n_reference, centres))
    signal = PromptDistributionSignal()
    signal.reference = ref
    return centres, ref, signal


def test_mmd_is_near_zero_for_real_like_prompts_and_large_for_one_region():
    rng = np.random.default_rng(0)
    centres, ref, signal = _world(rng, 12, 3000)
    alike = [signal.value(state_of(signal, ref, clusters(rng, 200, centres)))
             for _ in range(20)]
    narrow = signal.value(state_of(signal, ref, clusters(rng, 200, centres[:1])))
    # Unbiased: the alike samples scatter around 0, far below one cluster's distance.
    assert abs(float(np.mean(alike))) < 0.01 < narrow
    assert max(alike) < narrow / 5
    # Too few prompts: no value.
    assert signal.value(state_of(signal, ref, clusters(rng, MIN_SKETCH_PROMPTS - 1,
                                                        centres))) is None


def test_sketches_pool_exactly_and_stay_fixed_size():
    rng = np.random.default_rng(1)
    centres, ref, signal = _world(rng, 6, 1000)
    a, b = clusters(rng, 30, centres[:2]), clusters(rng, 50, centres[2:])
    merged = signal.merge([state_of(signal, ref, a), state_of(signal, ref, b)])
    whole = state_of(signal, ref, np.concatenate([a, b]))
    assert merged[0] == 80 and np.allclose(merged[1], whole[1])
    assert abs(signal.value(merged) - signal.value(whole)) < 1e-9
    big = state_of(signal, ref, clusters(rng, 5000, centres))
    assert big[1].shape == whole[1].shape == (len(ref.mu) + 1,)


def test_calibrated_strength_counts_only_far_and_the_reason_quotes_it():
    signal = PromptDistributionSignal()
    signal.calibration = {"far": 0.2, "note": "calibration split, 10 benign accounts"}
    assert signal.strength(0.1, None) == 0.0 and signal.strength(0.0, None) == 0.0
    assert signal.strength(0.4, None) == 1.0 and 0 < signal.strength(0.25, None) < 1
    assert "calibration split, 10 benign accounts" in signal.explain(0.4, None)
    signal.calibration = None
    assert signal.strength(0.9, None) == 0.0
    assert "no calibrated threshold" in signal.explain(0.9, None)


class ClusterEmbedder:
    """Prompts 'topic K ...' embed near centre K (seeded noise per text)."""

    dim = DIM

    def __init__(self, centres: np.ndarray) -> None:
        self.centres = centres

    def embed(self, texts):
        out = []
        for t in texts:
            words = t.split()
            k = int(words[1]) if words[:1] == ["topic"] else len(t)
            k %= len(self.centres)
            rng = np.random.default_rng(abs(hash(t)) % 2**32)
            v = self.centres[k] + 0.3 * rng.standard_normal(DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def test_pipeline_feeds_the_sketch_from_embeddings():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((8, DIM))
    ref = build_reference(clusters(rng, 2000, centres))
    pipeline = DetectionPipeline(embedder=CachedEmbedder(ClusterEmbedder(centres)),
                                 topic_map=np.eye(DIM, dtype=np.float32)[:8],
                                 prompt_reference=ref)
    for i in range(60):
        topic = 0 if i % 2 else 1
        pipeline.observe(RequestEvent(
            ts=T0 + 60 * i, request_id=f"r{i}", endpoint="/v1/chat/completions",
            status=200, latency_ms=900.0, account="one", params={},
            prompt=f"user: topic {topic} question {i}", prompt_tokens=10,
            completion_tokens=100))
    reading = next(r for r in pipeline.signals_of("one") if r.signal == "prompt_distribution")
    assert reading.value is not None and reading.value > 0.05  # two topics of eight


def test_shipped_reference_is_in_the_embedders_space():
    ref = load_reference()
    assert ref is not None and ref.w.shape == (len(ref.mu), 384) and ref.n_ref >= 1000
    assert 0.0 < ref.mu_sq < 1.0


def test_embedding_cache_round_trips_through_a_file(tmp_path):
    class Counting:
        dim = DIM
        calls = 0

        def embed(self, texts):
            Counting.calls += len(texts)
            return clusters(np.random.default_rng(len(texts)), len(texts), np.eye(DIM))

    first = CachedEmbedder(Counting())
    texts = [f"prompt {i}" for i in range(300)]
    # A digest ending in a NUL byte: fixed-width byte arrays would drop it.
    assert any(prompt_digest(t)[-1] == 0 for t in texts)
    vectors = first.embed(texts)
    assert first.save(tmp_path / "cache.npz") == 300
    second = CachedEmbedder(Counting())
    assert second.load(tmp_path / "cache.npz") == 300
    Counting.calls = 0
    assert np.array_equal(second.embed(texts), vectors) and Counting.calls == 0


def test_sampled_embedding_is_a_stable_share_of_prompts():
    from distillguard.config import Settings

    settings = Settings.load(env={}).replace(detection_embedding_sample=0.25)
    pipeline = DetectionPipeline(settings)
    texts = [f"question number {i}" for i in range(4000)]
    share = sum(map(pipeline.sampled, texts)) / len(texts)
    assert 0.22 < share < 0.28
    assert [pipeline.sampled(t) for t in texts[:50]] == [pipeline.sampled(t)
                                                         for t in texts[:50]]
    assert all(map(DetectionPipeline(Settings.load(env={})).sampled, texts[:50]))
