"""The local backend: a transformers causal LM served from this process.

Generation runs in one worker thread, never on the event loop. Requests wait in a
bounded, per-account fair queue (``scheduler.FairQueue``: a request beyond its account's
share or the queue's capacity is refused at once with 429 / 503 and ``Retry-After``);
between two decode steps the worker drops rows whose consumer went away, admits waiting
requests into the running batch (``Batcher``), and decodes one token for every row.

A request's time to first byte is the rest of the step under way plus its own prefill,
so both are kept short: at most ``admit_per_step`` requests are prefilled between two
steps (when a flood's rows, started together, finish together, all of them used to be
prefilled in one go: 8 prompts took 1.8 s of the embedded model on a loaded CPU, and a
request arriving then waited for all of it), and established accounts' requests
(``priority`` > 0) are prefilled on their own, first, so that their first token never
waits for a flood's prompts.
Results travel back with ``loop.call_soon_threadsafe`` into one ``asyncio.Queue`` per
request, one hand-over per request and step, so many clients stream at once without
blocking the loop or each other.

Token counts: ``prompt_tokens`` counts the prompt once, whatever ``n``;
``completion_tokens`` counts every token the model sampled, the end-of-sequence token
included (it was generated, and ``max_tokens`` bounds it too), and the tokens of a stop
string included, although the stop string's text is cut from the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from distillguard.backends.base import (
    BackendError,
    Choice,
    Completion,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
)
from distillguard.backends.batching import Batcher, ChoiceTokens, Item
from distillguard.backends.model_cache import ensure_converted
from distillguard.backends.scheduler import FairQueue
from distillguard.backends.tiny import create_tiny_model

__all__ = ["LocalBackend", "create_tiny_model"]

log = logging.getLogger(__name__)

# Smoothing of the per-step time and request length behind Retry-After estimates.
_EWMA = 0.1


class _Job:
    """A request in flight: the worker thread fills ``queue`` through the loop."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.queue: asyncio.Queue[list[Item] | BackendError] = asyncio.Queue()
        self._loop = loop
        # Plain attributes: the loop thread sets them, the worker reads them between
        # steps; a stale read only delays the drop by one step.
        self.cancelled = False
        self.failed = False

    @property
    def closed(self) -> bool:
        return self.cancelled or self.failed

    def deliver(self, items: list[Item]) -> None:
        self._post(items)

    def fail(self, error: BackendError) -> None:
        self.failed = True
        self._post(error)

    def _post(self, payload: list[Item] | BackendError) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, payload)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this request any more


class LocalBackend:
    """Serve a transformers causal LM (the embedded model by default) with batching.

    ``model_path`` is a folder ``from_pretrained`` loads; None means the embedded model,
    converted on first use into ``cache_dir`` (see ``model_cache.ensure_converted``).
    ``max_batch`` bounds the rows (choices) decoded together; ``threads`` > 0 sets
    torch's thread count. ``queue_size`` bounds the requests waiting for rows and
    ``queue_per_account`` those of one account; ``reserved_rows`` of the batch only
    take established accounts' requests (see ``scheduler.FairQueue``);
    ``admit_per_step`` bounds the requests prefilled between two steps (0: no bound).
    """

    # Generation runs here, so the gateway hands each request a watermark sampler.
    watermarks = True

    def __init__(self, model_path: Path | None, *, model_name: str, max_batch: int = 16,
                 threads: int = 0, cache_dir: Path | str | None = None,
                 queue_size: int = 64, queue_per_account: int = 8,
                 reserved_rows: int = 2, admit_per_step: int = 4) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model_path = Path(model_path) if model_path else None
        self.model_name = model_name
        self.max_batch = max_batch
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.admit_per_step = admit_per_step
        self._batcher: Batcher | None = None
        self._step_seconds = 0.05
        self._request_steps = 64.0
        self.waiting = FairQueue(queue_size, queue_per_account, rows=max_batch,
                                 reserved=reserved_rows,
                                 service_seconds=self._service_seconds)
        self.waiting.close()  # until start()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> LocalBackend:
        """Build from ``Settings``: ``local_model_path`` or the embedded model."""
        return cls(
            Path(settings.local_model_path) if settings.local_model_path else None,
            model_name=settings.model_name,
            max_batch=settings.local_max_batch,
            threads=settings.local_threads,
            cache_dir=settings.model_cache_dir,
            queue_size=settings.local_queue_size,
            queue_per_account=settings.local_queue_per_account,
            reserved_rows=settings.local_reserved_rows,
            admit_per_step=settings.local_admit_per_step,
        )

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load model and tokenizer in a thread, then start the generation worker."""
        if self._thread is not None:
            return
        self._batcher = await asyncio.to_thread(self._load)
        self._stopping = False
        self.waiting.reopen()
        self._thread = threading.Thread(target=self._work, name="distillguard-local",
                                        daemon=True)
        self._thread.start()

    def _load(self) -> Batcher:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        path = self.model_path or ensure_converted(self.cache_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load a model from {path}: {exc}", status=503,
                               code="backend_unavailable") from None
        model.eval()  # type: ignore[no-untyped-call]
        log.info("local backend: loaded %s from %s", self.model_name, path)
        return Batcher(model, tokenizer, max_rows=self.max_batch)

    async def close(self) -> None:
        """Stop the worker; requests still pending end with BackendError(503)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._fail_waiting()
        await asyncio.to_thread(thread.join)
        self._thread = None
        self._batcher = None

    def models(self) -> list[str]:
        return [self.model_name]

    def gauges(self) -> list[tuple[str, str, str, float]]:
        """The queue's series for ``/metrics`` (the runtime shows a backend's
        ``gauges`` when it has one)."""
        batcher = self._batcher
        return [
            ("distillguard_local_queue_waiting", "gauge",
             "Requests waiting for rows of the local batch.", len(self.waiting)),
            ("distillguard_local_batch_rows", "gauge", "Rows (choices) being decoded now.",
             batcher.rows if batcher is not None else 0),
            ("distillguard_local_shed_overloaded_total", "counter",
             "Requests refused or evicted with 503 because the queue was full.",
             self.waiting.shed_full),
            ("distillguard_local_shed_account_total", "counter",
             "Requests refused with 429 because their account had its share waiting.",
             self.waiting.shed_account),
        ]

    # -- requests ---------------------------------------------------------------------

    async def complete(self, request: GenerationRequest) -> Completion:
        """Generate all choices; their text equals what ``stream`` would show."""
        texts: list[list[str]] = [[] for _ in range(request.n)]
        reasons: dict[int, Any] = {}
        counts: dict[int, int] = {}
        async with contextlib.aclosing(self._items(request)) as items:
            async for item in items:
                if isinstance(item, StreamDelta):
                    texts[item.index].append(item.text)
                    if item.finish_reason is not None:
                        reasons[item.index] = item.finish_reason
                elif isinstance(item, ChoiceTokens):
                    counts[item.index] = item.completion_tokens
                else:
                    choices = [
                        Choice(index=i, text="".join(texts[i]), finish_reason=reasons[i],
                               completion_tokens=counts[i])
                        for i in range(request.n)
                    ]
                    return Completion(choices, item.prompt_tokens, item.completion_tokens)
        raise BackendError("the local backend ended a request without a result", status=500,
                           code="internal_error")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Yield text deltas as they are generated, then one ``StreamEnd``.

        Closing this generator early drops the request's rows at the next step.
        """
        async with contextlib.aclosing(self._items(request)) as items:
            async for item in items:
                if not isinstance(item, ChoiceTokens):
                    yield item

    async def _items(self, request: GenerationRequest) -> AsyncGenerator[Item, None]:
        if request.n < 1 or request.max_tokens < 1:
            raise BackendError("n and max_tokens must be at least 1", status=400,
                               code="invalid_value", param="n" if request.n < 1 else "max_tokens")
        job = _Job(request, asyncio.get_running_loop())
        self.waiting.offer(job)
        try:
            while True:
                payload = await job.queue.get()
                if isinstance(payload, BackendError):
                    raise payload
                for item in payload:
                    yield item
                    if isinstance(item, StreamEnd):
                        return
        finally:
            job.cancelled = True

    # -- the worker thread ------------------------------------------------------------

    def _service_seconds(self) -> float:
        """How long one request holds its rows, by the recent step time and length."""
        return self._step_seconds * self._request_steps

    def _fail_waiting(self) -> None:
        error = BackendError("the local backend is shutting down", status=503,
                             code="backend_unavailable")
        for job in self.waiting.close():
            if not job.closed:
                job.fail(error)

    def _work(self) -> None:
        batcher = self._batcher
        assert batcher is not None
        try:
            while not self._stopping:
                if not batcher.rows and not self.waiting.wait():
                    break  # idle until a request arrives or close()
                if self._stopping:
                    break
                batcher.drop_closed()
                joining = self.waiting.take(batcher.free_rows, batcher.rows_by_account(),
                                            busy=bool(batcher.rows),
                                            limit=self.admit_per_step)
                for job in joining:
                    self._request_steps += _EWMA * (job.request.max_tokens
                                                    - self._request_steps)
                started = time.perf_counter()
                try:
                    # Established accounts' prompts first and on their own: their first
                    # token is out before the others' prefill starts.
                    ranked = [job for job in joining if job.request.priority > 0]
                    for group in (ranked, [job for job in joining
                                           if job.request.priority <= 0]):
                        if group:
                            # The queue holds this backend's jobs, which are batcher Jobs.
                            batcher.admit(group)  # type: ignore[arg-type]
                    batcher.step()
                except Exception:
                    log.exception("local backend: generation failed")
                    error = BackendError("generation failed in the local backend", status=500,
                                         code="internal_error")
                    for job in joining:
                        if not job.closed:
                            job.fail(error)
                    batcher.fail_all(error)
                if batcher.rows:
                    self._step_seconds += _EWMA * (time.perf_counter() - started
                                                   - self._step_seconds)
        finally:
            self._fail_waiting()
            batcher.fail_all(BackendError("the local backend is shutting down", status=503,
                                          code="backend_unavailable"))
