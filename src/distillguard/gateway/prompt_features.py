"""Embedding-derived prompt features for events kept without prompt text.

With ``retain_prompts = false`` the stored event has no prompt, so detection cannot embed
it. The gateway therefore maps the prompt through detection's embedding space
(``detection.space.PromptSpace``) before the text is dropped and stores only the
derived values (topic, the elicitation judge's similarity, the random Fourier features)
in ``event.features["pe"]``, for the same sampled share of prompts detection would
embed (``detection_embedding_sample``).

Embedding costs tens of milliseconds per prompt on a CPU, so it happens off the request
path: ``offer`` (on the event loop, after the response) puts the event and the prompt's
text in a bounded queue and returns at once; one thread embeds what the queue holds in
batches and hands each event, with its derived features, to ``emit`` (the event
writer, then detection's driver). When the queue is full the event is not held back:
``offer`` returns False, the caller writes it as it is (without the derived features),
and ``skipped`` counts it (``distillguard_prompt_features_skipped_total``). Memory is
bounded by ``queue_size`` events and their prompt texts; a text lives only until its
batch is embedded.

Order. Detection reads the log in the order it was written, and timing signals
(inter-arrival gaps) read that order. So while the queue holds anything, an account's
other events (prompts outside the sample, refused requests) queue behind it too, with
no text, and are written in turn: the log keeps the order in which requests finished,
as with prompt text. Only under overload (the queue full) does an event overtake the
queued ones.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from distillguard.detection.space import FEATURES_KEY

if TYPE_CHECKING:
    from distillguard.detection.space import PromptSpace
    from distillguard.telemetry.events import RequestEvent

log = logging.getLogger("distillguard.gateway")


class PromptFeatureQueue:
    """A bounded queue of events awaiting their derived prompt features, and its thread."""

    def __init__(self, space: PromptSpace, emit: Callable[[RequestEvent, bool], None], *,
                 queue_size: int = 256, batch_size: int = 16) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self.space = space
        self.emit = emit
        self.queue_size = queue_size
        self.batch_size = batch_size
        # (event, text to derive from or "" to pass through, served)
        self._items: collections.deque[tuple[RequestEvent, str, bool]] = collections.deque()
        self._cond = threading.Condition()
        self._offered = 0
        self._done = 0
        self._closing = False
        self._deadline = float("inf")
        self.derived = 0  # events written with derived features
        self.skipped = 0  # events written without them: queue full, closing, or failure
        self._thread = threading.Thread(target=self._run, name="prompt-features",
                                        daemon=True)
        self._thread.start()

    def offer(self, event: RequestEvent, text: str, *, served: bool = True) -> bool:
        """Queue ``event`` to get the derived features of ``text`` (``""``: none, it
        only keeps its place behind queued events); never blocks. False when the queue
        is full or closing (a ``text`` then counts in ``skipped``), or, for an event
        without ``text``, when nothing is queued: the caller then writes the event
        itself."""
        with self._cond:
            if not text and self._offered == self._done:
                return False  # nothing to wait behind
            if self._closing or len(self._items) >= self.queue_size:
                if text:
                    self.skipped += 1
                return False
            self._items.append((event, text, served))
            self._offered += 1
            self._cond.notify_all()
            return True

    @property
    def pending(self) -> int:
        """Events queued or being embedded, not yet handed to ``emit``."""
        with self._cond:
            return self._offered - self._done

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every event offered before this call was handed to ``emit``."""
        with self._cond:
            target = self._offered
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking events and hand over the queued ones: embedded while ``timeout``
        lasts, the rest without derived features (counted in ``skipped``)."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join()

    # --- thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:  # load the model and embed the exemplars before the first request needs them
            self.space.warm()
        except Exception:  # noqa: BLE001 - derive() will fail and say so, per batch
            log.exception("loading the prompt embedder for derived features failed")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items) or self._closing)
                if not self._items:
                    return
                batch = [self._items.popleft()
                         for _ in range(min(self.batch_size, len(self._items)))]
                late = self._closing and time.monotonic() >= self._deadline
            texts = [text for _, text, _ in batch if text]
            derived: list[dict[str, object]] | None = None
            if texts and not late:
                try:
                    derived = self.space.derive(texts)
                except Exception:  # noqa: BLE001 - the events are written regardless
                    log.exception("embedding %d prompts for their derived features failed; "
                                  "their events are written without them", len(texts))
            values = iter(derived or ())
            for event, text, served in batch:
                if text and derived is not None:
                    event = dataclasses.replace(event, features={
                        **(event.features or {}), FEATURES_KEY: next(values)})
                try:
                    self.emit(event, served)
                except Exception:  # noqa: BLE001 - one refused event must not stop the rest
                    log.exception("writing event %s after its prompt features failed",
                                  event.request_id)
            with self._cond:
                if derived is not None:
                    self.derived += len(texts)
                else:
                    self.skipped += len(texts)
                self._done += len(batch)
                self._cond.notify_all()
