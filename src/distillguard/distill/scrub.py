"""Scrubs: what a distiller does to remove an inherited watermark, so we can measure it.

Three published attacks, each a function here and an option of ``distillguard distill``:

* ``clean_finetune`` (Gu et al. 2024, "On the learnability of watermarks for language
  models"): after distillation, fine-tune the student further on clean text that never
  passed through a watermarked API (``distill train --clean-finetune FILE``).
* ``paraphrase_pairs`` (Pan et al., ACL 2025, untargeted and targeted paraphrasing):
  rewrite every harvested answer with an unwatermarked model before training; the
  embedded model is the paraphraser by default. ``avoid`` (a ``Neutraliser``) makes it
  targeted: the paraphraser is steered away from the (context, token) pairs estimated to
  be green (``distill paraphrase``, ``--targeted``).
* ``Neutraliser`` (Pan et al.'s watermark neutralisation): estimate from the harvest
  which (previous token, token) pairs the watermark favoured (``estimate_pairs``: pairs
  over-represented in the harvest against clean text) and subtract a bias from them at
  inference time. ``distill neutralise STUDENT`` writes ``neutralise.json`` into the
  student folder; ``forensics.suspects.WeightsSuspect`` decodes such a student through
  it, as the distiller's server would.

The estimate assumes a context width of 1 (one previous token), as the default scheme
uses; an attacker who does not know the width would have to estimate it as well.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from distillguard.distill.train import Pair, TrainError, TrainResult, train_student

NEUTRALISER_FILE = "neutralise.json"
PARAPHRASE_TEMPLATE = "Rewrite the following text in your own words:\n\n{text}"


def clean_finetune(student: str | Path, clean_pairs: Sequence[Pair], out_dir: Path, *,
                   size: str = "s", epochs: float = 2.0, lr: float | None = None,
                   batch_size: int = 8, device: str = "auto", seed: int = 0,
                   max_prompt_tokens: int = 256, max_response_tokens: int = 256,
                   heldout_pairs: Sequence[Pair] | None = None,
                   prefix_cache: dict[Any, Any] | None = None,
                   progress: TextIO | None = sys.stderr) -> TrainResult:
    """Fine-tune the distilled ``student`` folder further on ``clean_pairs`` (Gu et al.).

    The same trainer and ``size`` as the distillation, so the same blocks move; the
    result is saved in ``out_dir`` (which may be ``student`` itself).
    """
    if not clean_pairs:
        raise TrainError("no clean pairs to fine-tune on")
    if not (Path(student) / "config.json").is_file():
        raise TrainError(f"no distilled student at {student}")
    return train_student(
        clean_pairs, Path(out_dir), student=str(student), size=size, device=device,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + 1,
        max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
        heldout_pairs=heldout_pairs if heldout_pairs is not None else [],
        prefix_cache=prefix_cache, progress=progress)


@dataclasses.dataclass
class Neutraliser:
    """Subtract ``delta`` from the logits of ``pairs[previous token]`` when decoding.

    Called as a transformers ``LogitsProcessor`` (``__call__(input_ids, scores)``).
    """

    delta: float
    pairs: dict[int, list[int]]
    context_width: int = 1

    def __post_init__(self) -> None:
        import torch

        self._index = {a: torch.tensor(sorted(set(b)), dtype=torch.long)
                       for a, b in self.pairs.items() if b}

    @property
    def size(self) -> int:
        """How many (previous token, token) pairs are penalised."""
        return sum(len(v) for v in self._index.values())

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, prev in enumerate(input_ids[:, -1].tolist()):
            idx = self._index.get(prev)
            if idx is not None:
                scores[row, idx.to(scores.device)] -= self.delta
        return scores

    def adjust(self, ids: Sequence[int], logits: Any) -> Any:
        """``logits[i]`` (the next-token logits after ``ids[i]``), neutralised in place."""
        for pos, prev in enumerate(ids):
            idx = self._index.get(int(prev))
            if idx is not None:
                logits[pos, idx.to(logits.device)] -= self.delta
        return logits

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "delta": self.delta, "context_width": self.context_width,
                "pairs": {str(a): sorted(set(b)) for a, b in self.pairs.items() if b}}

    def save(self, folder: Path) -> Path:
        """Write ``neutralise.json`` into ``folder`` (a student's model folder)."""
        path = Path(folder) / NEUTRALISER_FILE
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> Neutraliser | None:
        """The neutraliser saved in ``folder``, or None when there is none."""
        path = Path(folder) / NEUTRALISER_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(float(data["delta"]), {int(a): [int(t) for t in b]
                                               for a, b in data["pairs"].items()},
                       int(data.get("context_width", 1)))
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainError(f"{path} is not a neutraliser file: {exc}") from None


def _bigrams(texts: Sequence[Sequence[int]]) -> tuple[collections.Counter, collections.Counter]:
    pairs: collections.Counter = collections.Counter()
    contexts: collections.Counter = collections.Counter()
    for ids in texts:
        for a, b in zip(ids, ids[1:]):
            pairs[(a, b)] += 1
            contexts[a] += 1
    return pairs, contexts


def estimate_pairs(harvest: Sequence[Sequence[int]], clean: Sequence[Sequence[int]], *,
                   min_count: int = 2, ratio: float = 2.0,
                   smoothing: float = 0.5) -> dict[int, list[int]]:
    """(previous token -> tokens) the watermark probably favoured, from token ids.

    A pair is kept when it occurs at least ``min_count`` times in the harvest and its
    share among the tokens after the same previous token is at least ``ratio`` times
    its (smoothed) share in the clean texts: a green list raises exactly those shares.
    """
    h_pairs, h_ctx = _bigrams(harvest)
    c_pairs, c_ctx = _bigrams(clean)
    out: dict[int, list[int]] = {}
    cut = math.log(ratio)
    for (a, b), n in h_pairs.items():
        if n < min_count:
            continue
        share_h = n / h_ctx[a]
        share_c = (c_pairs.get((a, b), 0) + smoothing) / (c_ctx.get(a, 0) + 2 * smoothing)
        if math.log(share_h) - math.log(share_c) >= cut:
            out.setdefault(a, []).append(b)
    return out


def build_neutraliser(tokenizer: Any, harvest: Sequence[str], clean: Sequence[str], *,
                      delta: float = 2.0, min_count: int = 2,
                      ratio: float = 2.0) -> Neutraliser:
    """``estimate_pairs`` on texts tokenised with the student's tokenizer."""
    def ids(texts: Sequence[str]) -> list[list[int]]:
        return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

    if not harvest:
        raise TrainError("no harvested text to estimate the watermark from")
    return Neutraliser(delta, estimate_pairs(ids(harvest), ids(clean), min_count=min_count,
                                             ratio=ratio))


@dataclasses.dataclass
class ParaphraseResult:
    """Paraphrased pairs and how many answers fell back to the original."""

    pairs: list[Pair]
    rewritten: int
    kept_original: int


def paraphrase_pairs(pairs: Sequence[Pair], paraphraser: Any, *,
                     template: str = PARAPHRASE_TEMPLATE, max_tokens: int = 256,
                     temperature: float = 0.0, seed: int = 0,
                     avoid: Neutraliser | None = None,
                     progress: TextIO | None = sys.stderr) -> ParaphraseResult:
    """Each pair's response rewritten by ``paraphraser`` (a ``WeightsSuspect``).

    The paraphraser is asked ``template`` with the response in it, greedy by default.
    ``avoid``: penalise those pairs while paraphrasing (targeted paraphrasing). An empty
    rewrite keeps the original response, as a distiller would rather than lose the pair.
    """
    if "{text}" not in template:
        raise TrainError("the paraphrase template needs a {text} placeholder")
    asks = [template.format(text=p.response) for p in pairs]
    outs = paraphraser.generate(asks, max_tokens=max_tokens, temperature=temperature,
                                seed=seed, progress=progress, neutraliser=avoid)
    result, kept = [], 0
    for pair, text in zip(pairs, outs):
        text = text.strip()
        if not text:
            kept += 1
            text = pair.response
        result.append(Pair(pair.prompt, text))
    return ParaphraseResult(result, len(result) - kept, kept)
