"""The embedding space detection reads prompts in, and its derived values without text.

``PromptSpace`` holds what turns a prompt's embedding into what the embedding signals
read: the topic map (``coverage``, campaign topic overlap), the elicitation judge's
exemplars (its embedding half) and the random-Fourier-feature reference
(``prompt_distribution``), with the sampled share ``detection_embedding_sample``. The
detection pipeline maps the embeddings of prompt text through it; with
``retain_prompts = false`` the gateway maps the prompt through the same space where the
event is built, before the text is dropped, and stores only the derived values in
``event.features["pe"]``:

- ``v``: the space's tag (a digest of the embedder's kind and dimension, the topic map,
  the reference and the exemplars); a reader in another space ignores the values;
- ``t``: the nearest topic (-1 without a topic map);
- ``s``: cosine similarity to the nearest eliciting exemplar (exact float);
- ``f``: the prompt's random Fourier features, ``cos(W x + b)`` as little-endian int16
  of ``round(32767 cos)``, base64 (absent without a reference).

No embedding is stored: 128 cosines of random projections, a topic id and one
similarity are what the signals read, and less than the 384 floats of the embedding.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from distillguard.detection.features import hash64

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.elicitation import Elicitation
    from distillguard.detection.embedder import Embedder
    from distillguard.detection.sketch import PromptSketch

# Characters of the last user message that are embedded.
EMBED_CHARS = 1000
_Q = 32767.0
FEATURES_KEY = "pe"

# (topic, similarity to the nearest exemplar, ``PromptSketch.extended`` or None)
PromptInfo = tuple[int, float, "np.ndarray | None"]


def sample_cut(share: float) -> int:
    """``detection_embedding_sample`` as a cut on 10 bits of the prompt's hash."""
    return int(round(share * 1024))


def in_sample(text: str, cut: int) -> bool:
    """Whether ``text`` is in the embedded sample that ``cut`` (``sample_cut``) keeps."""
    return cut >= 1024 or (hash64(text) & 1023) < cut


def embed_slice(prompt: str | None, raw: dict[str, Any] | None) -> str:
    """The last user message's text (at most ``EMBED_CHARS``), sliced out of the
    flattened prompt by the span the gateway recorded; "" without either."""
    if raw is None or not prompt or "span" not in raw:
        return ""
    start, end = raw["span"]
    return prompt[start:min(end, start + EMBED_CHARS)]


class PromptSpace:
    """Embedder, topic map, reference sketch and elicitation judge; see the module."""

    def __init__(self, embedder: Embedder, *, topic_map: np.ndarray | None,
                 sketch: PromptSketch | None, elicitation: Elicitation,
                 sample: float = 1.0) -> None:
        if sketch is not None and sketch.w.shape[1] != embedder.dim:
            sketch = None  # a reference from another embedding space
        self.embedder = embedder
        self.topic_map = topic_map
        self.sketch = sketch
        self.elicitation = elicitation
        self.sample_cut = sample_cut(sample)
        self._tag: str | None = None
        self._rows: tuple[np.ndarray, int, int] | None = None

    @classmethod
    def build(cls, embedder: Embedder, *, topic_map: np.ndarray | None = None,
              sketch: PromptSketch | None = None, sample: float = 1.0) -> PromptSpace:
        """The space of ``embedder``, with the shipped topic map and reference where
        none is given."""
        from distillguard.detection.elicitation import Elicitation
        from distillguard.detection.sketch import load_reference
        from distillguard.detection.topics import load_topic_map

        return cls(embedder, topic_map=load_topic_map() if topic_map is None else topic_map,
                   sketch=load_reference() if sketch is None else sketch,
                   elicitation=Elicitation(embedder), sample=sample)

    @classmethod
    def from_settings(cls, settings: Settings, embedder: Embedder | None = None
                      ) -> PromptSpace | None:
        """The space detection with these settings reads (shipped topic map and
        reference, MiniLM unless ``embedder`` is given); None when detection embeds
        nothing (``detection_embeddings`` off, or torch/transformers missing)."""
        from distillguard.detection.pipeline import embeddings_available

        if embedder is None:
            if not embeddings_available(settings):
                return None
            from distillguard.detection.embedder import settings_embedder

            embedder = settings_embedder(settings)
        return cls.build(embedder, sample=settings.detection_embedding_sample)

    @property
    def tag(self) -> str:
        """8 hex digits naming the space (equal spaces, equal tags)."""
        if self._tag is None:
            inner = getattr(self.embedder, "inner", self.embedder)
            h = hashlib.blake2b(digest_size=4)
            h.update(f"{type(inner).__name__}:{self.embedder.dim}".encode())
            if self.topic_map is not None:
                h.update(b"topics")
                h.update(np.ascontiguousarray(self.topic_map, dtype=np.float32).tobytes())
            if self.sketch is not None:
                h.update(f"rff:{self.sketch.sigma!r}:{self.sketch.seed}:"
                         f"{self.sketch.w.shape}".encode())
                h.update(self.sketch.mu.tobytes())
            from distillguard.detection.elicitation import EXEMPLARS

            h.update("\n".join(EXEMPLARS).encode())
            self._tag = h.hexdigest()
        return self._tag

    def warm(self) -> None:
        """Load the embedder and embed the elicitation exemplars (seconds for MiniLM)."""
        self.elicitation.similarity(np.zeros(self.embedder.dim, dtype=np.float32))

    def sampled(self, text: str) -> bool:
        """Whether ``text`` is in the embedded sample (``detection_embedding_sample``)."""
        return in_sample(text, self.sample_cut)

    def to_derive(self, prompt: str | None, raw: dict[str, Any] | None) -> str:
        """The text of a prompt whose features are derived without it: the last user
        message (``embed_slice``) when it is in the sample, else ""."""
        text = embed_slice(prompt, raw)
        return text if text and self.sampled(text) else ""

    def _stacked(self) -> tuple[np.ndarray, int, int]:
        """Topic centroids, elicitation exemplars and sketch projections as one matrix
        (and where the exemplars start and end): one product per new prompt, not three."""
        if self._rows is None:
            dim = self.embedder.dim
            parts = [np.zeros((0, dim), dtype=np.float32) if m is None
                     else np.asarray(m, dtype=np.float32)
                     for m in (self.topic_map, self.elicitation.exemplars(),
                               None if self.sketch is None else self.sketch.w)]
            lo = len(parts[0])
            self._rows = (np.ascontiguousarray(np.vstack(parts)), lo, lo + len(parts[1]))
        return self._rows

    def _project(self, embedding: np.ndarray) -> tuple[int, float, np.ndarray]:
        """The embedding's topic, its similarity to the nearest elicitation exemplar,
        and its sketch projections ``x @ w.T`` (empty without a sketch)."""
        rows, lo, hi = self._stacked()
        y = rows @ np.asarray(embedding, dtype=np.float32)
        topic = int(np.argmax(y[:lo])) if lo else -1
        similarity = float(y[lo:hi].max()) if hi > lo else 0.0
        return topic, similarity, y[hi:]

    def info(self, embedding: np.ndarray) -> PromptInfo:
        """What the embedding signals read of one embedding: its topic, its similarity
        to the nearest elicitation exemplar, and ``[phi, |phi|^2]`` of the sketch."""
        topic, similarity, projected = self._project(embedding)
        phi = None if self.sketch is None else self.sketch.extended_from(projected)
        return topic, similarity, phi

    # --- derived values kept without text ------------------------------------------------
    def derive(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """The ``features["pe"]`` values of each text (embedded in one call)."""
        if not texts:
            return []
        vectors = self.embedder.embed(list(texts))
        out = []
        for x in vectors:
            topic, similarity, projected = self._project(x)
            d: dict[str, Any] = {"v": self.tag, "t": topic, "s": similarity}
            if self.sketch is not None:
                cos = np.cos(projected + self.sketch.b)
                q = np.clip(np.rint(cos * _Q), -_Q, _Q).astype("<i2")
                d["f"] = base64.b64encode(q.tobytes()).decode("ascii")
            out.append(d)
        return out

    def stored(self, raw: dict[str, Any] | None) -> PromptInfo | None:
        """(topic, similarity, extended sketch features) from an event's stored derived
        values; None when there are none, or they come from another space."""
        d = raw.get(FEATURES_KEY) if raw is not None else None
        if not isinstance(d, dict) or d.get("v") != self.tag:
            return None
        phi = None
        if self.sketch is not None:
            blob = d.get("f")
            if not isinstance(blob, str):
                return None
            try:
                q = np.frombuffer(base64.b64decode(blob, validate=True), dtype="<i2")
            except ValueError:
                return None
            if len(q) != len(self.sketch.b):
                return None
            cos = q.astype(np.float32) / np.float32(_Q)
            phi64 = (self.sketch.scale * cos).astype(np.float64)
            phi = np.append(phi64, phi64 @ phi64)
        topic = d.get("t")
        similarity = d.get("s")
        if not isinstance(topic, int) or not isinstance(similarity, (int, float)):
            return None
        return topic, float(similarity), phi
