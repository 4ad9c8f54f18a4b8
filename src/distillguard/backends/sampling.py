"""Shape a batch of next-token logits (temperature, top-p) before per-row sampling.

Every token a local backend emits goes through ``shape_logits`` and then one
``RowSampler.sample_row`` call: the request's watermark when it has one, else
``distillguard.watermark.service.PlainSampler``. One path, so a watermarked and an
unwatermarked request differ only in that call.
"""

from __future__ import annotations

import torch


def shape_logits(logits: torch.Tensor, temperature: torch.Tensor,
                 top_p: torch.Tensor) -> torch.Tensor:
    """Return ``[rows, vocab]`` float32 logits ready for ``sample_row``.

    Rows with ``temperature <= 0`` are greedy and stay unscaled. Other rows are divided
    by their temperature, and tokens outside their top-p nucleus are set to -inf (the
    smallest set of most likely tokens whose probability reaches ``top_p``; the most
    likely token always stays).
    """
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
