"""``EventWriter``: takes events off the request path and writes them in batches.

The gateway calls ``offer(event, served=...)`` from the event loop after it has answered;
threads may call ``submit(event)``. One writer thread drains a bounded queue into
``store.write_events`` in batches of up to ``batch_size``, waiting at most
``flush_interval`` for a batch to fill.

Overflow policy. ``offer`` never blocks the event loop: when the queue is full (the store
writes slower than traffic arrives, or is down), the event goes to an overflow list that
the writer drains after the queue, and the writer reports itself ``backlogged``. While it
is, the gateway's admission refuses new API requests with 503 and ``Retry-After`` before
doing any work, so the backlog cannot grow with served traffic. The events of requests
that were served (``served=True``) are always kept. The events of refused requests are
kept while the overflow holds fewer than ``overflow_size``; beyond that they are shed,
counted (``shed``, exported on ``/metrics``) and logged, never silently. A store that is
down for a minute under load therefore costs a minute of 503s, and every served
request's event is written once the store is back. ``submit`` (threads) still waits for
room instead.

Failures: a batch whose write raises (database locked, connection lost) is retried with
exponential backoff until it is written; stores treat ``request_id`` as a key, so a
retry never duplicates an event. Errors are logged with the exception, never with the
events' content. After ``split_after`` failed attempts a batch is halved, again and
again, so that one event the store refuses cannot hold back the others; such a lone
event, failing while other writes succeed, is appended to ``dead_letter_path`` (JSON
lines, with the error) and logged by request id. During an outage nothing succeeds, so
nothing is set aside: everything waits and is written once the store is back.

"Acknowledged": an event of a served request is acknowledged when ``offer`` or ``submit``
returns; it is then never dropped by the writer. It is durable once ``flush()`` or
``close()`` has returned after it was queued; ``close()`` writes everything queued
before returning, which is what the gateway's shutdown (SIGTERM) relies on. Events
submitted but not yet written when the process is killed outright (SIGKILL, OOM) are
lost: at most one ``flush_interval`` of traffic plus whatever the queue held.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from distillguard.datadir import private_dir
from distillguard.telemetry.rows import dump_json

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.store import Store

log = logging.getLogger(__name__)

# Queue markers: write what you have now / write everything and stop.
_FLUSH = object()
_STOP = object()
_FULL_WARNING_EVERY_S = 10.0
DEAD_LETTER_FILE = "events-rejected.jsonl"


class WriterClosed(RuntimeError):
    """``submit`` after ``close()``."""


class EventWriter:
    """One thread that writes submitted events to a store in batches."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        queue_size: int = 100_000,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        split_after: int = 5,
        dead_letter_path: str | Path | None = None,
        overflow_size: int | None = None,
    ) -> None:
        if batch_size < 1 or queue_size < 1:
            raise ValueError("batch_size and queue_size must be at least 1")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.split_after = split_after
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        self._last_success = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        # Events offered while the queue was full, drained by the writer thread after it.
        self._overflow: collections.deque[RequestEvent] = collections.deque()
        self.overflow_size = max(1, queue_size // 10) if overflow_size is None \
            else overflow_size
        self._shed = 0
        self._progress = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._closed = False
        self._last_full_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> EventWriter:
        """A writer with ``event_batch_size``, ``event_flush_interval``, ``event_queue_size``,
        setting refused events aside in ``data_path/events-rejected.jsonl``."""
        return cls(
            store,
            batch_size=settings.event_batch_size,
            flush_interval=settings.event_flush_interval,
            queue_size=settings.event_queue_size,
            dead_letter_path=settings.data_path / DEAD_LETTER_FILE,
        )

    # --- producer side --------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events submitted and not yet written."""
        with self._progress:
            return self._submitted - self._written

    def _count_submitted(self) -> None:
        with self._progress:
            if self._closed:
                raise WriterClosed("the event writer is closed")
            self._submitted += 1

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._last_full_warning >= _FULL_WARNING_EVERY_S:
            self._last_full_warning = now
            log.warning(
                "event queue full (%d events): the store is writing slower than traffic "
                "arrives; new API requests are refused with 503 until it catches up",
                self._queue.maxsize,
            )

    def submit(self, event: RequestEvent) -> None:
        """Queue an event. Returns at once unless the queue is full; then waits for room."""
        self._count_submitted()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._warn_full()
            self._queue.put(event)

    def offer(self, event: RequestEvent, *, served: bool) -> bool:
        """Queue an event without ever blocking (for the event loop); see the module's
        overflow policy. Returns False when the event was shed (only if not ``served``)."""
        self._count_submitted()
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            pass
        self._warn_full()
        if served or len(self._overflow) < self.overflow_size:
            self._overflow.append(event)
            return True
        with self._progress:
            self._submitted -= 1
            self._shed += 1
        return False

    @property
    def backlogged(self) -> bool:
        """True while the queue is full or its overflow holds events: admit no new work."""
        return bool(self._overflow) or self._queue.full()

    @property
    def shed(self) -> int:
        """Events of refused requests dropped under overflow (see the module docstring)."""
        return self._shed

    def _drain_overflow(self) -> None:
        # Writer thread only: move overflowed events into the queue while it has room.
        while self._overflow:
            try:
                self._queue.put_nowait(self._overflow[0])
            except queue.Full:
                return
            self._overflow.popleft()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event submitted before this call is written.

        Returns False if ``timeout`` seconds passed first (the store keeps failing).
        """
        with self._progress:
            target = self._submitted
            if self._written >= target:
                return True
        if self._thread.is_alive():
            self._queue.put(_FLUSH)
        with self._progress:
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write everything queued, stop the thread. Idempotent.

        Returns False if ``timeout`` passed with events still unwritten (they are logged
        as lost, by count). Without a timeout, waits as long as the store needs.
        """
        with self._progress:
            already = self._closed
            self._closed = True
        if not already:
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "event writer did not finish within %.1f s: %d events not written",
                timeout or 0.0,
                self.pending,
            )
            return False
        return True

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            self._drain_overflow()
            first = self._queue.get()
            batch: list[RequestEvent] = []
            if first is _STOP:
                stop = True
            elif first is not _FLUSH:
                batch.append(first)  # type: ignore[arg-type]
                deadline = time.monotonic() + self.flush_interval
                while len(batch) < self.batch_size:
                    remaining = deadline - time.monotonic()
                    try:
                        # Take what is already queued even when the deadline has passed,
                        # so that a backlog goes out in full batches.
                        item = self._queue.get(timeout=remaining) if remaining > 0 else (
                            self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if item is _FLUSH:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                self._write(batch)
        # A submit that was counted before close() may put its event after _STOP: keep
        # draining until every counted event is written (close() stops new counts).
        while True:
            self._drain_overflow()
            leftovers: list[RequestEvent] = []
            while len(leftovers) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _FLUSH and item is not _STOP:
                    leftovers.append(item)  # type: ignore[arg-type]
            if leftovers:
                self._write(leftovers)
                continue
            with self._progress:
                if self._written >= self._submitted:
                    return
            time.sleep(0.001)

    def _write(self, batch: list[RequestEvent]) -> None:
        """Write ``batch``, retrying until every event is written or set aside."""
        # (events, failed attempts before splitting): the whole batch gets split_after
        # tries (most failures are transient); once split, halves split at their first
        # failure, so a refused event is isolated in about log2(batch) more attempts.
        work = collections.deque([(batch, self.split_after)])
        delay = self.retry_initial
        failing_since: float | None = None
        while work:
            part, split_at = work.popleft()
            attempt = 0
            while True:
                try:
                    self.store.write_events(part)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the events
                    attempt += 1
                    failing_since = failing_since or time.monotonic()
                    log.error(
                        "writing %d events failed (attempt %d, next try in %.2f s): %s: %s",
                        len(part),
                        attempt,
                        delay,
                        type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "",
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    if attempt >= split_at:
                        if len(part) > 1:
                            # Perhaps one event the store refuses: halve until it stands
                            # alone, so that the others are written meanwhile.
                            middle = len(part) // 2
                            work.extendleft([(part[middle:], 1), (part[:middle], 1)])
                            break
                        if work:
                            work.append((part, split_at))  # try the others first
                            break
                        # A lone event that keeps failing although other writes succeeded
                        # after the trouble began is refused by the store (not an outage):
                        # set it aside rather than stall every event behind it.
                        if self.dead_letter_path is not None and (
                            self._last_success > failing_since
                        ):
                            self._set_aside(part[0], exc)
                            self._count_done(1)
                            break
                    continue
                if attempt:
                    log.warning("wrote %d events after %d failed attempts", len(part), attempt)
                self._last_success = time.monotonic()
                delay = self.retry_initial
                self._count_done(len(part))
                break

    def _count_done(self, count: int) -> None:
        with self._progress:
            self._written += count
            self._progress.notify_all()

    def _set_aside(self, event: RequestEvent, exc: Exception) -> None:
        assert self.dead_letter_path is not None
        record = {"error": f"{type(exc).__name__}: {exc}", "event": event.to_dict()}
        try:
            private_dir(self.dead_letter_path.parent)
            # Owner-only, like the databases: the file holds prompts.
            fd = os.open(self.dead_letter_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as out:
                out.write(dump_json(record) + "\n")
        except OSError as file_exc:
            log.error("event %s refused by the store and not saved to %s (%s): it is lost",
                      event.request_id, self.dead_letter_path, file_exc)
            return
        log.error("event %s refused by the store; saved to %s", event.request_id,
                  self.dead_letter_path)
