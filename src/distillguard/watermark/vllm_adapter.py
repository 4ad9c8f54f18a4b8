"""Embed the watermark in a vLLM server through its logits-processor interface.

Two levels, both driven by ``WatermarkService`` so that vLLM embeds exactly what the
detector checks:

* ``RequestWatermark``: a per-request callable ``(prompt_ids, output_ids, logits) ->
  logits``, the form of vLLM's ``SamplingParams.logits_processors`` and of the
  per-request processors that ``AdapterLogitsProcessor`` wraps. It needs no vLLM import.
* ``vllm_logits_processor_class(service)``: a subclass of vLLM's
  ``AdapterLogitsProcessor`` for ``LLM(logits_processors=[...])``. It reads the account
  from ``SamplingParams.extra_args["distillguard_account"]``, which only the gateway sets
  (it must drop that key from client bodies), and records the watermark facts in
  ``extra_args["distillguard_watermark"]``.

vLLM is optional: importing this module never imports it.
"""

from __future__ import annotations

import importlib
import itertools
import math
from typing import Any

import numpy as np
import torch

from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.schemes import FreePrefix, Scheme

ACCOUNT_ARG = "distillguard_account"
RECORD_ARG = "distillguard_watermark"


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed (or too old to have ``AdapterLogitsProcessor``)."""


class RequestWatermark:
    """One request's watermark as a vLLM per-request logits processor.

    vLLM calls it once per decoding step with the prompt ids, the ids generated so far
    and the row's raw logits (before its temperature); ``temperature`` is the request's,
    which the exponential scheme needs because it picks the token itself.

    The exponential scheme's free prefix (``Exponential.free_bits``) lives here, one per
    processor: while it lasts the logits pass unchanged and vLLM samples with its own
    generator; the surprisal of each token it drew is read from the previous step's
    logits at the request's temperature. That is before vLLM's top-p / top-k, which raise
    the drawn token's probability, so the count overstates surprisal and the prefix may
    end early, making the 2 ** -free_bits bound approximate. vLLM v1 serves ``n`` > 1 as
    separate child requests, each given its own processor, so choices differ as they do
    in the local backend (not run against vLLM here: it is not installed in CI).
    """

    def __init__(self, scheme: Scheme, partition: KeyedPartition, *,
                 temperature: float = 1.0, max_tokens: int | None = None) -> None:
        self.scheme = scheme
        self.partition = partition
        self.temperature = float(temperature)
        free = float(getattr(scheme, "free_bits", 0.0))
        # As in the local backend (capped by ``max_tokens``).
        self.prefix = FreePrefix(free if self.temperature > 0 else 0.0, max_tokens)
        self._previous: torch.Tensor | None = None  # log-probs of the last free step

    def __call__(self, prompt_ids: list[int], output_ids: list[int],
                 logits: torch.Tensor) -> torch.Tensor:
        if self._previous is not None and output_ids:
            self.prefix.spend(-float(self._previous[output_ids[-1]]) / math.log(2))
            self._previous = None
        if self.prefix.open:
            self.prefix.take()
            self._previous = torch.log_softmax(logits.float() / self.temperature, -1)
            return logits
        # The whole sequence, not just the last h tokens: the exponential scheme checks
        # whether the current window occurred before.
        context = np.fromiter(itertools.chain(prompt_ids, output_ids), dtype=np.int64)
        if len(context) < self.scheme.context_width:
            return logits
        return self.scheme.process_logits(self.partition, context, logits, self.temperature)


def request_watermark(service: Any, account: str | None, *, temperature: float = 1.0,
                      strength: float = 1.0, max_tokens: int | None = None,
                      ) -> tuple[RequestWatermark | None, dict | None]:
    """The per-request processor for ``account`` and its event record (None: disabled)."""
    sampler, record = service.sampler_for(account, strength=strength)
    if record is None:
        return None, None
    return RequestWatermark(sampler.scheme, sampler.partition, temperature=temperature,
                            max_tokens=max_tokens), record


def vllm_logits_processor_class(service: Any) -> type:
    """A vLLM ``AdapterLogitsProcessor`` subclass that watermarks every request.

    Raises ``VLLMUnavailable`` when vLLM cannot be imported.
    """
    try:
        module = importlib.import_module("vllm.v1.sample.logits_processor")
        base = module.AdapterLogitsProcessor
    except (ImportError, AttributeError) as exc:
        raise VLLMUnavailable(
            "vLLM with AdapterLogitsProcessor is needed for the vLLM adapter") from exc

    class DistillguardWatermark(base):  # type: ignore[misc, valid-type]
        """Watermarks every request with the server's key; requests cannot opt out."""

        def is_argmax_invariant(self) -> bool:
            # The green bias and the exponential race both change the argmax.
            return False

        def new_req_logits_processor(self, params: Any) -> RequestWatermark | None:
            extra = getattr(params, "extra_args", None)
            if extra is None:
                extra = {}
                params.extra_args = extra
            temperature = float(getattr(params, "temperature", 1.0) or 0.0)
            max_tokens = getattr(params, "max_tokens", None)
            processor, record = request_watermark(
                service, extra.get(ACCOUNT_ARG), temperature=temperature,
                max_tokens=None if max_tokens is None else int(max_tokens))
            extra[RECORD_ARG] = record
            return processor

    return DistillguardWatermark
