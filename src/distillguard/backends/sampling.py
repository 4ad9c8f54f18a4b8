"""The order in which one next-token distribution is made, for every local backend.

1. the model's raw logits;
2. the client's penalties and ``logit_bias`` (``adjust_logits``);
3. the watermark's bias (``RowSampler.bias_row``): on the raw logits, so that nothing a
   request asks for afterwards can undo it (scaled by the temperature when that is
   above 1, so that a hot request cannot dilute it either);
4. temperature and top-p (``shape_logits``), each first raised to the watermark's floor
   (``RowSampler.effective``);
5. the pick (``RowSampler.draw_row``): the request's watermark when it has one, else
   ``distillguard.watermark.service.PlainSampler``.

One path, so a watermarked and an unwatermarked request differ only in steps 3-5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # The gateway's request schema reads MAX_LOGIT_BIAS_ENTRIES from here, and a lean
    # install (no torch) runs that schema: the functions import torch when they run.
    import torch

MAX_LOGIT_BIAS_ENTRIES = 300


def adjust_logits(logits: torch.Tensor, generated: np.ndarray, *, presence: float = 0.0,
                  frequency: float = 0.0,
                  bias: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Apply OpenAI's penalties and ``logit_bias`` to one row's ``[vocab]`` logits in place.

    Each token already generated (``generated``) loses ``presence`` once and
    ``frequency`` per occurrence; ``bias`` is (token ids, values) added as given.
    """
    import torch

    if (presence or frequency) and len(generated):
        ids, counts = np.unique(generated, return_counts=True)
        penalty = torch.from_numpy(counts * frequency + presence).to(logits.dtype)
        logits.index_add_(0, torch.from_numpy(ids), -penalty)
    if bias is not None:
        logits.index_add_(0, bias[0], bias[1].to(logits.dtype))


def shape_logits(logits: torch.Tensor, temperature: torch.Tensor,
                 top_p: torch.Tensor) -> torch.Tensor:
    """Return ``[rows, vocab]`` float32 logits ready for ``sample_row``.

    Rows with ``temperature <= 0`` are greedy and stay unscaled. Other rows are divided
    by their temperature, and tokens outside their top-p nucleus are set to -inf (the
    smallest set of most likely tokens whose probability reaches ``top_p``; the most
    likely token always stays).
    """
    import torch

    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    nucleus = (~greedy) & (top_p < 1)
    if bool(nucleus.any()):
        rows = nucleus.nonzero().squeeze(1)
        sub = scaled.index_select(0, rows)
        ordered, order = sub.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs
        drop = before >= top_p.index_select(0, rows)[:, None]
        drop[:, 0] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
        scaled[rows] = torch.empty_like(sub).scatter_(1, order, ordered)
    return scaled
