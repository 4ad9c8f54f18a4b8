"""Prompt-distribution sketches: a two-sample test in embedding space, in fixed memory.

Each prompt's embedding is mapped once (and cached with its topic) to ``DIM`` random
Fourier features ``phi(x) = sqrt(2 / DIM) * cos(W x + b)`` of a Gaussian kernel (``W``
and ``b`` drawn from a fixed seed, bandwidth by the median heuristic on the reference).
An account keeps only ``n``, ``S = sum phi(x_i)`` and ``Q = sum |phi(x_i)|^2`` (one
vector ``sum [phi(x_i), |phi(x_i)|^2]``, so an event costs one vector addition): constant
size, and the sketches of linked accounts pool by adding up.

Against the reference distribution (user turns of real ShareGPT conversations the
simulator never draws from, shipped as the mean feature vector ``mu`` of that sample and
an unbiased estimate of ``|mu|^2``), the unbiased squared maximum mean discrepancy of
an account's prompts is::

    MMD^2_u = (|S|^2 - Q) / (n (n - 1)) - 2 S . mu / n + |mu|^2_u

exact for the kernel ``phi(x) . phi(y)`` (no approximation enters the test), and 0 in
expectation for an account whose prompts are drawn like real traffic.
``build_reference`` makes the shipped ``prompt_reference.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIM = 128
SEED = 13
REFERENCE_FILE = Path(__file__).with_name("prompt_reference.npz")


class PromptSketch:
    """The feature map and the reference it is compared with."""

    def __init__(self, sigma: float, mu: np.ndarray, mu_sq: float, n_ref: int,
                 dim_in: int = 384, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.sigma = float(sigma)
        self.w = (rng.standard_normal((len(mu), dim_in)) / sigma).astype(np.float32)
        self.b = rng.uniform(0.0, 2 * np.pi, len(mu)).astype(np.float32)
        self.scale = np.float32(np.sqrt(2.0 / len(mu)))
        self.mu = np.asarray(mu, dtype=np.float64)
        self.mu_sq = float(mu_sq)
        self.n_ref = int(n_ref)
        self.seed = seed

    def features(self, x: np.ndarray) -> np.ndarray:
        """``phi`` of one embedding (or of each row of a matrix), float32."""
        return self.scale * np.cos(x @ self.w.T + self.b)

    def extended(self, x: np.ndarray) -> np.ndarray:
        """``[phi(x), |phi(x)|^2]`` as float64: what an account's sketch sums."""
        return self.extended_from(x @ self.w.T)

    def extended_from(self, projected: np.ndarray) -> np.ndarray:
        """``extended`` from the projections ``x @ w.T`` already computed."""
        phi = (self.scale * np.cos(projected + self.b)).astype(np.float64)
        out = np.empty(len(phi) + 1)
        out[:-1] = phi
        out[-1] = phi @ phi
        return out

    def mmd2(self, n: int, s: np.ndarray, q: float) -> float:
        """Unbiased squared MMD between ``n`` prompts (feature sum ``s``, sum of squared
        norms ``q``) and the reference; needs ``n >= 2``."""
        s64 = s.astype(np.float64)
        within = (float(s64 @ s64) - q) / (n * (n - 1))
        return within - 2.0 * float(s64 @ self.mu) / n + self.mu_sq

    def save(self, path: str | Path = REFERENCE_FILE) -> None:
        np.savez(Path(path), sigma=self.sigma, mu=self.mu.astype(np.float32),
                 mu_sq=self.mu_sq, n_ref=self.n_ref, seed=self.seed,
                 dim_in=self.w.shape[1])


def build_reference(embeddings: np.ndarray, *, dim: int = DIM, seed: int = SEED
                    ) -> PromptSketch:
    """The sketch of a reference sample (rows: unit embeddings of real prompts)."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n < 50:
        raise ValueError(f"a reference needs at least 50 prompts, got {n}")
    # Median heuristic: half the median squared distance between reference prompts.
    rng = np.random.default_rng(seed)
    i, j = rng.integers(n, size=(2, 4000))
    keep = i != j
    d2 = np.sum((x[i[keep]] - x[j[keep]]) ** 2, axis=1)
    sigma = float(np.sqrt(np.median(d2) / 2.0))
    probe = PromptSketch(sigma, np.zeros(dim), 0.0, n, dim_in=x.shape[1], seed=seed)
    phi = probe.features(x).astype(np.float64)
    total = phi.sum(axis=0)
    mu = total / n
    mu_sq = (float(total @ total) - float(np.sum(phi * phi))) / (n * (n - 1))
    return PromptSketch(sigma, mu, mu_sq, n, dim_in=x.shape[1], seed=seed)


def load_reference(path: str | Path | None = None) -> PromptSketch | None:
    """The shipped reference sketch (or the one at ``path``); None when absent."""
    target = Path(path) if path else REFERENCE_FILE
    if not target.exists():
        return None
    d = np.load(target)
    return PromptSketch(float(d["sigma"]), d["mu"], float(d["mu_sq"]), int(d["n_ref"]),
                        dim_in=int(d["dim_in"]), seed=int(d["seed"]))
