"""Continuous batching for a transformers causal LM: the part of the local backend that
touches tensors. It runs in one thread and knows nothing about asyncio.

All live sequences ("rows", one per choice) share one KV cache, left-padded to a common
length, with a 2-D attention mask and per-row position ids, so a row's numbers are those
it would have alone (up to float noise from different matrix shapes). Between decode
steps, finished and cancelled rows leave the batch (the cache shrinks, and columns of
padding that no row needs any more are cut), and new requests join: their prompts are
prefilled together, then their caches are padded and stacked onto the running one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from distillguard.backends.base import (
    BackendError,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
)
from distillguard.backends.sampling import adjust_logits, shape_logits
from distillguard.backends.textstream import TextStream
from distillguard.watermark.base import RowSampler
from distillguard.watermark.service import PlainSampler

log = logging.getLogger(__name__)

_SEED_MASK = (1 << 64) - 1


@dataclasses.dataclass
class ChoiceTokens:
    """Internal stream item: a choice finished after generating ``completion_tokens``."""

    index: int
    completion_tokens: int


Item = StreamDelta | StreamEnd | ChoiceTokens


class Job(Protocol):
    """One request as the batcher sees it; the backend provides the delivery."""

    request: GenerationRequest

    @property
    def closed(self) -> bool:
        """True once the consumer went away or the job failed: drop its rows."""

    def deliver(self, items: list[Item]) -> None:
        """Hand items to the consumer (called from the batching thread)."""

    def fail(self, error: BackendError) -> None:
        """End the request with an error (called from the batching thread)."""


class _Row:
    """One choice being generated."""

    __slots__ = ("job", "index", "sampler", "generator", "greedy", "temperature", "top_p",
                 "presence", "frequency", "bias", "prompt_length", "context", "length",
                 "max_new", "generated", "text")

    def __init__(self, job: Job, index: int, prompt: Sequence[int], max_new: int,
                 sampler: RowSampler, generator: torch.Generator, text: TextStream,
                 bias: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        request = job.request
        self.job = job
        self.index = index
        self.sampler = sampler
        self.generator = generator
        # The watermark's floors: a request cannot sample below them (sampling.py).
        self.temperature, self.top_p = sampler.effective(request.temperature, request.top_p)
        self.greedy = self.temperature <= 0
        self.presence = float(request.presence_penalty)
        self.frequency = float(request.frequency_penalty)
        self.bias = bias
        self.prompt_length = len(prompt)
        self.context = np.empty(len(prompt) + max_new, dtype=np.int64)
        self.context[: len(prompt)] = prompt
        self.length = len(prompt)
        self.max_new = max_new
        self.generated = 0
        self.text = text


class _Progress:
    """Per-job bookkeeping while its rows are in flight."""

    __slots__ = ("prompt_tokens", "rows_open", "completion_tokens")

    def __init__(self, prompt_tokens: int, rows: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.rows_open = rows
        self.completion_tokens = 0


def row_generator(seed: int | None, choice: int) -> torch.Generator:
    """The generator of one choice: seeded from the request's seed, else at random.

    Choice 0 uses the seed itself; choice ``i`` a seed derived from (seed, i), so the
    ``n`` choices differ while each stays reproducible and independent of the batch.
    """
    if seed is None:
        value = secrets.randbits(63)
    elif choice == 0:
        value = seed & _SEED_MASK
    else:
        state = np.random.SeedSequence([seed & _SEED_MASK, choice]).generate_state(1, np.uint64)
        value = int(state[0])
    return torch.Generator().manual_seed(value)


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BackendError(f"content parts of type {kind!r} are not supported by "
                                   "this model; send text parts only", status=400,
                                   code="invalid_value", param="messages")
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    raise BackendError("message content must be a string or a list of content parts",
                       status=400, code="invalid_value", param="messages")


class Batcher:
    """Decode many requests as one batch with a shared, reshaped KV cache.

    Call ``admit`` with new jobs and ``step`` to decode one token for every row, both
    from the same thread. ``max_rows`` is advisory for callers (see ``free_rows``).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_rows: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        self._plain: RowSampler = PlainSampler()
        self.vocab_size = int(model.config.vocab_size)
        # Keys the generator of greedy requests that a watermark's floor turns into
        # sampling: the same prompt gets the same answer while this process runs.
        self._greedy_salt = secrets.token_bytes(16)
        self._rows: list[_Row] = []
        self._progress: dict[int, _Progress] = {}
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cached length], 1 = real token
        self._positions: torch.Tensor | None = None  # [rows] position id of the next token
        self._next: torch.Tensor | None = None  # [rows] sampled tokens not yet in the cache

    # -- state ------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Number of choices being decoded."""
        return len(self._rows)

    def rows_by_account(self) -> dict[str, int]:
        """Rows being decoded per account (``GenerationRequest.account``; "" for none),
        which the fair queue reads to give free rows to the accounts holding fewest."""
        counts: dict[str, int] = {}
        for row in self._rows:
            account = row.job.request.account or ""
            counts[account] = counts.get(account, 0) + 1
        return counts

    @property
    def free_rows(self) -> int:
        """Rows that may join before the batch reaches ``max_rows``."""
        return max(0, self.max_rows - len(self._rows))

    # -- requests in ------------------------------------------------------------------

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids of the request's prompt; BackendError(400) if it cannot be served."""
        tok = self.tokenizer
        if request.kind == "chat":
            param = "messages"
            messages = [
                {"role": str(m.get("role", "user")), "content": _message_text(m.get("content"))}
                for m in request.messages or []
            ]
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False)
            except Exception as exc:  # a template may reject a conversation (e.g. roles)
                raise BackendError(f"the model's chat template rejected the messages: {exc}",
                                   status=400, code="invalid_value", param="messages") from None
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            param = "prompt"
            ids = tok(request.prompt or "")["input_ids"]
        if not ids:
            # The model needs at least one token to condition on.
            start = tok.bos_token_id if tok.bos_token_id is not None else self.pad_id
            ids = [int(start)]
        bad = [t for t in request.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise BackendError(f"'logit_bias' names token id {bad[0]}, outside this model's "
                               f"vocabulary of {self.vocab_size} tokens", status=400,
                               code="invalid_value", param="logit_bias")
        if self.context_length is not None and len(ids) >= self.context_length:
            raise BackendError(
                f"This model's maximum context length is {self.context_length} tokens; "
                f"your prompt has {len(ids)} tokens. Shorten the {param}.",
                status=400, code="context_length_exceeded", param=param,
            )
        return list(ids)

    def admit(self, jobs: Sequence[Job]) -> None:
        """Prefill new jobs together and merge their rows into the running batch.

        Jobs whose prompt cannot be served end with their BackendError; the others
        emit their first token before this returns.
        """
        accepted: list[tuple[Job, list[int]]] = []
        for job in jobs:
            if job.closed:
                continue
            try:
                accepted.append((job, self.encode(job.request)))
            except BackendError as exc:
                job.fail(exc)
        if not accepted:
            return
        width = max(len(ids) for _, ids in accepted)
        input_ids = torch.full((len(accepted), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(accepted), width), dtype=torch.long)
        for i, (_, ids) in enumerate(accepted):
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]

        # One prefill per prompt; its n choices share it (the cache rows are copied).
        expand: list[int] = []
        rows: list[_Row] = []
        for i, (job, ids) in enumerate(accepted):
            request = job.request
            max_new = request.max_tokens
            if self.context_length is not None:
                max_new = min(max_new, self.context_length - len(ids))
            self._progress[id(job)] = _Progress(len(ids), request.n)
            request.usage.prompt_tokens = len(ids)
            sampler = request.watermark if request.watermark is not None else self._plain
            seed = request.seed
            if seed is None and request.temperature <= 0:
                seed = self._greedy_seed(ids)
            bias = None
            if request.logit_bias:
                bias = (torch.tensor(list(request.logit_bias), dtype=torch.long),
                        torch.tensor(list(request.logit_bias.values()), dtype=torch.float32))
            for choice in range(request.n):
                expand.append(i)
                # Each choice its own row sampler: per-row watermark state (the
                # exponential scheme's free prefix) must not be shared between choices.
                rows.append(_Row(job, choice, ids, max(1, max_new),
                                 sampler.for_row(request.temperature > 0, max(1, max_new)),
                                 row_generator(seed, choice),
                                 TextStream(self._decode, request.stop), bias))
        index = torch.tensor(expand, dtype=torch.long)
        if len(expand) != len(accepted):
            cache.batch_select_indices(index)
        mask = mask.index_select(0, index)
        tokens, keep = self._sample_and_emit(rows, logits.index_select(0, index))
        if not keep:
            return
        keep_index = torch.tensor(keep, dtype=torch.long)
        if len(keep) != len(rows):
            cache.batch_select_indices(keep_index)
        mask = mask.index_select(0, keep_index)
        self._merge(cache, mask, [rows[k] for k in keep], tokens.index_select(0, keep_index))

    def _greedy_seed(self, ids: Sequence[int]) -> int:
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8,
                                 key=self._greedy_salt).digest()
        return int.from_bytes(digest, "little") >> 1

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, rows: list[_Row],
               tokens: torch.Tensor) -> None:
        positions = mask.sum(dim=1)
        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows = cache, mask, rows
            self._positions, self._next = positions, tokens
            return
        assert self._mask is not None and self._positions is not None and self._next is not None
        width = max(self._mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = width - t.shape[-dim_from_end]
            if missing == 0:
                return t
            pad = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(t, pad)

        # transformers types cache layers as a union of kinds; a causal LM's are all
        # key/value layers.
        old_layers: list[Any] = list(self._cache.layers)
        new_layers: list[Any] = list(cache.layers)
        for old, new in zip(old_layers, new_layers, strict=True):
            old.keys = torch.cat([left_pad(old.keys, 2), left_pad(new.keys, 2)], dim=0)
            old.values = torch.cat([left_pad(old.values, 2), left_pad(new.values, 2)], dim=0)
        self._mask = torch.cat([left_pad(self._mask, 1), left_pad(mask, 1)], dim=0)
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, tokens])
        self._rows.extend(rows)

    # -- decoding ---------------------------------------------------------------------

    def step(self) -> None:
        """Decode one token for every row; finished rows leave the batch."""
        if not self._rows:
            return
        assert self._mask is not None and self._positions is not None and self._next is not None
        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long)], dim=1)
        with torch.inference_mode():
            out = self.model(input_ids=self._next[:, None], attention_mask=mask,
                             position_ids=self._positions[:, None], cache=self._cache,
                             use_cache=True)
        self._mask = mask
        self._positions = self._positions + 1
        tokens, keep = self._sample_and_emit(self._rows, out.logits[:, -1, :])
        self._next = tokens
        if len(keep) != len(self._rows):
            self._select(keep)

    def drop_closed(self) -> None:
        """Remove the rows of jobs whose consumer went away or that failed."""
        keep = [i for i, row in enumerate(self._rows) if not row.job.closed]
        if len(keep) != len(self._rows):
            for row in self._rows:
                if row.job.closed:
                    self._progress.pop(id(row.job), None)
            self._select(keep)

    def fail_all(self, error: BackendError) -> None:
        """End every job in the batch with ``error`` and empty the batch."""
        for job in {id(r.job): r.job for r in self._rows}.values():
            job.fail(error)
        self._progress.clear()
        self._select([])

    def _select(self, keep: list[int]) -> None:
        if not keep:
            self._rows, self._cache = [], None
            self._mask = self._positions = self._next = None
            return
        assert self._cache is not None and self._mask is not None
        assert self._positions is not None and self._next is not None
        index = torch.tensor(keep, dtype=torch.long)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._next = self._next.index_select(0, index)
        # Columns that are padding in every remaining row cost attention for nothing.
        unused = int(self._mask.shape[1] - self._mask.sum(dim=1).max())
        if unused > 0:
            self._mask = self._mask[:, unused:]
            layers: list[Any] = list(self._cache.layers)
            for layer in layers:
                layer.keys = layer.keys[:, :, unused:, :]
                layer.values = layer.values[:, :, unused:, :]

    def _sample_and_emit(self, rows: list[_Row],
                         logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Pick one token per row, turn it into text, deliver it; return tokens and the
        indices of rows that go on."""
        temperature = torch.tensor([r.temperature for r in rows], dtype=torch.float32)
        top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32)
        with torch.inference_mode():
            logits = logits.float().clone()
            for i, row in enumerate(rows):
                if row.presence or row.frequency or row.bias is not None:
                    adjust_logits(logits[i], row.context[row.prompt_length: row.length],
                                  presence=row.presence, frequency=row.frequency,
                                  bias=row.bias)
            # What an unwatermarked greedy pick would be, for the watermark's tally.
            reference = logits.argmax(dim=-1).tolist()
            for i, row in enumerate(rows):
                if row.sampler.tally is not None:
                    logits[i] = row.sampler.bias_row(row.context[: row.length], logits[i],
                                                     max(1.0, row.temperature))
            shaped = shape_logits(logits, temperature, top_p)
        chosen = [0] * len(rows)
        keep: list[int] = []
        outbox: dict[int, tuple[Job, list[Item]]] = {}
        for i, row in enumerate(rows):
            job = row.job
            if job.closed:
                self._progress.pop(id(job), None)
                continue
            try:
                token = row.sampler.draw_row(row.context[: row.length], shaped[i],
                                             row.greedy, row.generator, reference[i])
            except Exception:
                log.exception("sampling failed")
                job.fail(BackendError("sampling failed", status=500, code="internal_error"))
                self._progress.pop(id(job), None)
                continue
            chosen[i] = token
            finish = self._advance(row, token)
            items = outbox.setdefault(id(job), (job, []))[1]
            piece = finish[1]
            if finish[0] is None:
                if piece:
                    items.append(StreamDelta(row.index, piece))
                keep.append(i)
                continue
            items.append(StreamDelta(row.index, piece, finish[0]))
            items.append(ChoiceTokens(row.index, row.generated))
            progress = self._progress[id(job)]
            progress.rows_open -= 1
            progress.completion_tokens += row.generated
            if progress.rows_open == 0:
                items.append(StreamEnd(progress.prompt_tokens, progress.completion_tokens))
                del self._progress[id(job)]
        for job, items in outbox.values():
            if items and not job.closed:
                job.deliver(items)
        return torch.tensor(chosen, dtype=torch.long), keep

    def _advance(self, row: _Row, token: int) -> tuple[FinishReason | None, str]:
        """Record ``token`` for ``row``; return (finish reason or None, new text)."""
        row.generated += 1
        # Charged as it is generated, so a request that ends early still pays for it.
        row.job.request.usage.completion_tokens += 1
        row.context[row.length] = token
        row.length += 1
        if token in self.eos_ids:
            return "stop", row.text.finish()
        piece = row.text.push(token)
        if row.text.stopped:
            return "stop", piece
        if row.generated >= row.max_new:
            piece += row.text.finish()
            return ("stop" if row.text.stopped else "length"), piece
        return None, piece

    def _decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False)
        return text

