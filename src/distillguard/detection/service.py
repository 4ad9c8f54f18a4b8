"""Detection driven from the durable event log, in the gateway or as its own service.

``DetectionRunner`` owns one pipeline and one position in a log. ``catch_up`` reads
the log from that position at its own pace and observes what it reads; ``round`` runs
the periodic job (baselines, campaigns, policy rules); ``checkpoint`` saves the whole
state with the position (``detection.checkpoint``). On start, ``resume`` restores the
last checkpoint, or, with none, warms up from the log's recent history within
``detection_warmup_hours`` and ``detection_warmup_events``.

Guarantees. Every event in the log is observed exactly once by the state that a
checkpoint holds: the checkpoint's state includes precisely the events up to its
position, and reading resumes after it. Events observed after the last checkpoint and
lost with the process (``kill -9``) are read again. Under load detection falls behind,
never blind: it reads at the speed it can, the round still runs every interval on what
it has read, and the backlog and lag are on ``/metrics``. Nothing is shed.

``run`` is the timer that ``serve`` uses (``detection_mode = inprocess``); the traffic
simulator and tests call ``catch_up`` and ``round`` themselves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distillguard.detection.checkpoint import CheckpointError, CheckpointStore, dump_state, restore
from distillguard.detection.snapshot import EMPTY, DetectionSnapshot

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.log import StoreLog
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.policy.engine import PolicyEngine

log = logging.getLogger("distillguard.detection")

READ_BATCH = 1000


class DetectionRunner:
    """One pipeline fed from one log position, with checkpoints and rounds.

    ``policy`` None: rounds refresh the pipeline but set no actions (a read-only view).
    All methods may be called from any thread; they take turns.
    """

    def __init__(self, pipeline: DetectionPipeline, log: StoreLog, *,
                 policy: PolicyEngine | None = None,
                 checkpoints: CheckpointStore | None = None, name: str = "inprocess",
                 warmup_s: float = 24 * 3600.0, warmup_events: int = 1_000_000,
                 batch: int = READ_BATCH, clock: Callable[[], float] = time.time,
                 labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.pipeline = pipeline
        self.labels = labels  # on its /metrics series, e.g. (("partition", "1"),)
        self.log = log
        self.policy = policy
        self.checkpoints = checkpoints
        self.name = name
        self.warmup_s = warmup_s
        self.warmup_events = warmup_events
        self.batch = batch
        self.clock = clock
        self.position = 0
        self.observed = 0  # events observed by this process
        self.rounds = 0
        self.checkpointed_at: float | None = None
        self.checkpointed_position = -1
        self.last_event_ts: float | None = None
        self._lock = threading.RLock()
        # The last round's results, replaced whole: readers never take the lock.
        self.snapshot: DetectionSnapshot = EMPTY

    @classmethod
    def from_settings(cls, settings: Settings, pipeline: DetectionPipeline, store: Any, *,
                      policy: PolicyEngine | None = None, name: str = "inprocess",
                      clock: Callable[[], float] = time.time) -> DetectionRunner:
        """A runner on the settings' store, with checkpoints beside it."""
        from distillguard.detection.log import StoreLog

        return cls(pipeline, StoreLog(store), policy=policy,
                   checkpoints=CheckpointStore.from_settings(settings), name=name,
                   warmup_s=settings.detection_warmup_hours * 3600.0,
                   warmup_events=settings.detection_warmup_events, clock=clock)

    # --- starting ----------------------------------------------------------------------
    def resume(self) -> str:
        """Restore the last checkpoint or pick the warm-up start; returns (and logs) which."""
        with self._lock:
            saved = self.checkpoints.load(self.name) if self.checkpoints is not None else None
            if saved is not None:
                try:
                    self.position = restore(self.pipeline, saved.blob)
                except CheckpointError as exc:
                    log.warning("detection checkpoint %r not restored (%s); warming up "
                                "from the log instead", self.name, exc)
                else:
                    self.log.start(self.position)
                    self.checkpointed_position = self.position
                    self.checkpointed_at = saved.saved_at
                    note = (f"detection {self.name}: resumed from the checkpoint at log "
                            f"position {self.position} ({len(self.pipeline.accounts())} "
                            f"accounts)")
                    log.info(note)
                    return note
            self.position = self.log.warmup_start(self.clock(), self.warmup_s,
                                                  self.warmup_events)
            head = self.log.head()
            size = f"{head - self.position} events, " if head >= self.position else ""
            note = (f"detection {self.name}: no checkpoint; warming up from log position "
                    f"{self.position} ({size}bounded by the last {self.warmup_s / 3600:g} h "
                    f"and {self.warmup_events} events)")
            log.info(note)
            return note

    # --- reading -----------------------------------------------------------------------
    def step(self) -> int:
        """Read and observe one batch after the position; returns how many were read."""
        with self._lock:
            records = self.log.read(self.position, self.batch)
            if not records:
                return 0
            self.pipeline.observe_many([event for _, event in records])
            self.position = records[-1][0]
            self.last_event_ts = records[-1][1].ts
            self.observed += len(records)
            return len(records)

    def catch_up(self, budget_s: float | None = None) -> int:
        """Read until the log is exhausted or ``budget_s`` seconds have passed; returns the
        events read. The head is sampled first, so a steady stream cannot keep it busy
        forever."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        total = 0
        with self._lock:
            self.log.head()
        while True:
            n = self.step()
            total += n
            if n < self.batch or (deadline is not None and time.monotonic() >= deadline):
                return total

    # --- the periodic job --------------------------------------------------------------
    def round(self) -> list[Any]:
        """Baselines and campaigns, then the policy rules (``driver.run_round``); publishes
        the round's ``snapshot`` and returns the actions set."""
        from distillguard.detection.driver import run_round

        with self._lock:
            self.snapshot, actions = run_round(self.pipeline, self.policy, self.clock)
            self.rounds += 1
            return actions

    def checkpoint(self) -> bool:
        """Save state and position (skipped when nothing was read since the last one)."""
        if self.checkpoints is None:
            return False
        with self._lock:
            if self.position == self.checkpointed_position:
                return False
            with self.pipeline._lock:
                blob = dump_state(self.pipeline, self.position)
            self.checkpoints.save(self.name, self.position, blob)
            self.log.committed(self.position)
            self.checkpointed_position = self.position
            self.checkpointed_at = time.time()
            return True

    def backlog(self) -> int:
        """Events in the log that detection has not read (as of its last read)."""
        return self.log.backlog(self.position)

    def lag_seconds(self) -> float:
        """How far behind detection is: the age of the newest event it observed, while
        events wait unread; 0 when caught up."""
        if self.backlog() == 0 or self.last_event_ts is None:
            return 0.0
        return max(0.0, self.clock() - self.last_event_ts)

    # --- the timer (serve's in-process mode) ---------------------------------------------
    async def run(self, interval: float, checkpoint_interval: float) -> None:
        """Read, run a round every ``interval`` and checkpoint every ``checkpoint_interval``
        seconds, until cancelled. A round runs on time even while a backlog is read: acting
        late on part of the traffic beats waiting for all of it."""
        poll = min(0.25, interval)
        next_round = time.monotonic() + interval
        next_checkpoint = time.monotonic() + checkpoint_interval
        while True:
            try:
                read = await asyncio.to_thread(self.catch_up, interval)
                now = time.monotonic()
                if now >= next_round:
                    await asyncio.to_thread(self.round)
                    next_round = time.monotonic() + interval
                if now >= next_checkpoint:
                    await asyncio.to_thread(self.checkpoint)
                    next_checkpoint = time.monotonic() + checkpoint_interval
            except asyncio.CancelledError:
                raise
            except Exception:
                # Detection must never take the gateway down; the next pass retries from
                # the same position, so nothing is skipped.
                log.exception("detection pass failed")
                read = 0
            if read < self.batch:
                await asyncio.sleep(poll)

    def close(self) -> None:
        """Save a last checkpoint and release the checkpoint store."""
        if self.checkpoints is not None:
            try:
                self.checkpoint()
            finally:
                self.checkpoints.close()

    def metrics_lines(self) -> list[str]:
        """Prometheus lines for detection's progress through the log."""
        return metrics_lines([self])


# (name, type, help, value of one runner) of each series, in the order /metrics shows them.
_SERIES: tuple[tuple[str, str, str, Callable[[DetectionRunner], str]], ...] = (
    ("distillguard_detection_lag_events", "gauge", "Events in the log detection has not "
     "read yet (its backlog).", lambda r: f"{r.backlog()}"),
    ("distillguard_detection_lag_seconds", "gauge", "Age of the newest event detection "
     "has observed while a backlog waits (0 when caught up).",
     lambda r: f"{r.lag_seconds():.3f}"),
    ("distillguard_detection_events_total", "counter", "Events detection observed from the "
     "log since this process started.", lambda r: f"{r.observed}"),
    ("distillguard_detection_log_position", "gauge", "Log position of the last event "
     "observed (event id in the store, stream sequence in JetStream).",
     lambda r: f"{r.position}"),
    ("distillguard_detection_checkpoint_age_seconds", "gauge", "Seconds since the last "
     "checkpoint (-1: none yet).",
     lambda r: f"{(time.time() - r.checkpointed_at) if r.checkpointed_at else -1.0:.1f}"),
)


def metrics_lines(runners: list[DetectionRunner]) -> list[str]:
    """Prometheus lines for the runners' progress through their logs: each series once,
    one sample per runner, labelled with its ``labels`` (a worker's partitions)."""
    from distillguard.gateway.metrics import label_text

    out = []
    for name, kind, text, value in _SERIES:
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        out += [f"{name}{label_text(r.labels)} {value(r)}" for r in runners]
    return out
