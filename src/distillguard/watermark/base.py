"""What a backend needs from a watermark at generation time.

The watermark acts on the model before any request field does. A backend takes one
row's raw next-token logits (after the client's penalties and ``logit_bias``), lets the
row's ``RowSampler`` (the request's, one per choice through ``for_row``) bias them
(``bias_row``), applies the effective temperature and top-p (``effective`` raises them
to the watermark's floors), and asks the sampler to pick the token (``draw_row``).
Plain sampling is a ``RowSampler`` too, so a backend has exactly one sampling path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch  # annotations only: detection runs without torch

ACTIVE_TOP_PROBABILITY = 0.99
"""A position counts as one where the watermark could act when the distribution it drew
from gave its most likely token less than this, or when the watermark changed the pick."""


@runtime_checkable
class RowSampler(Protocol):
    tally: dict[str, Any] | None
    """Counts the backend's draws update (``new_tally``); None for plain sampling."""

    def effective(self, temperature: float, top_p: float) -> tuple[float, float]:
        """The temperature and top-p actually used for a request asking for these.

        Temperature 0 means greedy. A watermark raises both to its floors so that no
        request field leaves it without entropy to act on.
        """

    def for_row(self, sampled: bool, max_tokens: int | None = None) -> RowSampler:
        """The sampler of one choice (row) of this request, sharing its ``tally``.

        A backend calls it once per choice and draws that row's tokens with the result
        only: a scheme may keep per-row state (the exponential scheme's free prefix).
        ``sampled``: the request asked for sampling (temperature above 0), before any
        floor raised it; a row that asked for greedy decoding stays repeatable.
        ``max_tokens``: the most tokens the row may generate, when the backend knows it.
        """

    def bias_row(self, context: np.ndarray, logits: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        """The row's raw logits (float32 ``[vocab]``) with the watermark's bias, if any.

        ``scale`` multiplies a logit bias: the backend passes max(1, temperature) so
        that a temperature above 1 cannot dilute the bias (below 1 it only sharpens it).
        """

    def draw_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                 generator: torch.Generator | None, reference: int | None = None) -> int:
        """Choose the next token of one sequence.

        ``context``: int64 token ids so far (prompt and generated), 1-D.
        ``logits``: what ``bias_row`` returned, then divided by the temperature and with
        tokens outside top-p set to -inf; unscaled when ``greedy``.
        ``generator``: the row's seeded generator, or None for torch's default.
        ``reference``: the token an unwatermarked greedy pick would have chosen (for the
        tally), or None.
        """

    def sample_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                   generator: torch.Generator | None) -> int:
        """``draw_row(bias_row(logits))`` for callers that shape nothing in between."""


def new_tally() -> dict[str, Any]:
    """Per-request counts a watermarked request's event record carries.

    ``tokens``: tokens drawn; ``keyed``: of those, drawn under a keyed seed (context
    long enough, window not already used, past any free prefix); ``active``: of those,
    where the watermark could change the pick (see ``ACTIVE_TOP_PROBABILITY``). A fully
    deterministic answer has ``active`` 0, and its event says so.
    """
    return {"tokens": 0, "keyed": 0, "active": 0}
