"""What a backend needs from a watermark at generation time.

A backend prepares one row's next-token logits (temperature applied, top-p filtered to
-inf) and asks the request's ``RowSampler`` to pick the token. Plain sampling is a
``RowSampler`` too, so a backend has exactly one sampling path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch  # annotations only: detection runs without torch


@runtime_checkable
class RowSampler(Protocol):
    def sample_row(
        self,
        context: np.ndarray,
        logits: torch.Tensor,
        greedy: bool,
        generator: torch.Generator | None,
    ) -> int:
        """Choose the next token of one sequence.

        ``context``: int64 token ids so far (prompt and generated), 1-D.
        ``logits``: float32 ``[vocab]``, already divided by the temperature and with
        tokens outside top-p set to -inf; unscaled when ``greedy``.
        ``generator``: the row's seeded generator, or None for torch's default.
        """
