"""The topic map: k-means centroids over embeddings of real first prompts (ShareGPT).

A fixed map lets coverage be compared across accounts and over time: each prompt falls
into its nearest topic, and an account that sweeps many topics evenly looks unlike a
user who keeps asking about their own work. The map ships with the package
(``topic_map.npy``, built by ``distillguard detection build-topic-map``).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from distillguard.detection.embedder import Embedder

SHIPPED_MAP = Path(__file__).with_name("topic_map.npy")


def kmeans(x: np.ndarray, k: int, *, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; returns unit centroids (k, d)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    centroids = [x[rng.integers(n)]]
    closest = 1.0 - x @ centroids[0]
    for _ in range(1, k):
        weights = np.clip(closest, 0, None) ** 2
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centroids.append(x[pick])
        closest = np.minimum(closest, 1.0 - x @ x[pick])
    c = np.stack(centroids)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x)
        norms = np.linalg.norm(new, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        new[empty] = c[empty]  # a topic nobody fell into keeps its centre
        norms[empty] = 1.0
        new = new / norms
        if np.allclose(new, c, atol=1e-5):
            break
        c = new
    return c.astype(np.float32)


def build_topic_map(embedder: Embedder, *, prompts: int = 4000, topics: int = 64,
                    seed: int = 0, progress: bool = False) -> np.ndarray:
    """Embed the first ``prompts`` ShareGPT first turns and cluster them into ``topics``."""
    from distillguard.detection.corpus import sharegpt_first_turns

    texts = list(itertools.islice(sharegpt_first_turns(), prompts))
    rows = []
    for start in range(0, len(texts), 256):
        rows.append(embedder.embed(texts[start:start + 256]))
        if progress:
            print(f"embedded {min(start + 256, len(texts))}/{len(texts)} prompts",
                  file=sys.stderr)
    return kmeans(np.concatenate(rows), topics, seed=seed)


def load_topic_map(path: str | Path | None = None) -> np.ndarray:
    """Unit centroids (k, d) as float32, from ``path`` or the map shipped with the package."""
    data = np.load(Path(path) if path else SHIPPED_MAP)
    data = data.astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def save_topic_map(centroids: np.ndarray, path: str | Path) -> None:
    """Save centroids as float16 (the map's resolution needs no more; 49 KB at 64 x 384)."""
    np.save(Path(path), centroids.astype(np.float16))
