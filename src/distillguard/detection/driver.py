"""Detection drivers: when detection reads the event log and when a round runs.

Detection reads events from the durable log (``DetectionRunner``, the store tailed by
id), never from the request path. The runtime is handed a driver factory: production
uses ``TimerDriver`` (``DetectionRunner.run``: read, a round every
``detection_interval`` seconds, checkpoints); the simulator and tests use
``ManualDriver``, whose rounds they run themselves at simulated instants. Every round,
also replay's, is ``run_round``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from distillguard.detection.snapshot import DetectionSnapshot, take_snapshot

if TYPE_CHECKING:
    from distillguard.clock import Clock
    from distillguard.config import Settings
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.detection.service import DetectionRunner
    from distillguard.policy.actions import Action
    from distillguard.policy.engine import PolicyEngine
    from distillguard.telemetry.events import RequestEvent


class DetectionDriver(Protocol):
    """Runs detection's reading of the log and its rounds."""

    @property
    def snapshot(self) -> DetectionSnapshot:
        """The last round's results (``EMPTY`` before the first round)."""
        ...

    def submit(self, event: RequestEvent) -> None:
        """Told of each finished request's event (it reaches detection through the
        log); must not block."""
        ...

    async def start(self) -> None:
        """Resume from the checkpoint and begin (called on the event loop)."""
        ...

    async def close(self) -> None:
        """Stop, read what the writer wrote last and save a checkpoint. The runtime
        calls it after the event writer closed."""
        ...


# (the runner, the settings, a function that writes every queued event to the log)
DriverFactory = Callable[["DetectionRunner", "Settings", Callable[[], object]],
                         DetectionDriver]


def run_round(pipeline: DetectionPipeline, policy: PolicyEngine | None,
              clock: Clock) -> tuple[DetectionSnapshot, list[Action]]:
    """One detection round: baselines and campaigns, a snapshot, then the policy rules
    (none when ``policy`` is None: a read-only view)."""
    pipeline.refresh()
    snapshot = take_snapshot(pipeline, clock())
    return snapshot, policy.evaluate(snapshot) if policy is not None else []


class TimerDriver:
    """Production: ``DetectionRunner.run`` as a task; its blocking work runs in threads."""

    def __init__(self, runner: DetectionRunner, settings: Settings,
                 flush: Callable[[], object]) -> None:
        self.runner = runner
        self.interval = float(settings.detection_interval)
        self.checkpoint_interval = float(settings.detection_checkpoint_interval)
        self._task: asyncio.Task[None] | None = None

    @property
    def snapshot(self) -> DetectionSnapshot:
        return self.runner.snapshot

    def submit(self, event: RequestEvent) -> None:
        """Nothing to do: the runner reads the event from the log."""

    async def start(self) -> None:
        await asyncio.to_thread(self.runner.resume)
        self._task = asyncio.get_running_loop().create_task(
            self.runner.run(self.interval, self.checkpoint_interval))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # Read what the writer just wrote, so the last checkpoint covers it all.
        await asyncio.to_thread(self.runner.catch_up, 5.0)
        await asyncio.to_thread(self.runner.close)


class ManualDriver:
    """Live simulation and tests: rounds run when ``round()`` is called.

    ``round(expected_events)`` first waits until that many events were submitted (an
    event is submitted just after its response's last byte, so a caller that has all
    its responses back may be a moment ahead), writes them to the log, lets the runner
    read them and runs one round.
    """

    def __init__(self, runner: DetectionRunner, settings: Settings | None,
                 flush: Callable[[], object]) -> None:
        self.runner = runner
        self.flush = flush
        self._submitted = 0
        self._cond = threading.Condition()

    @property
    def pipeline(self) -> DetectionPipeline:
        """The runner's pipeline."""
        return self.runner.pipeline

    @property
    def snapshot(self) -> DetectionSnapshot:
        return self.runner.snapshot

    def submit(self, event: RequestEvent) -> None:
        with self._cond:
            self._submitted += 1
            self._cond.notify_all()

    def catch_up(self, expected_events: int | None = None, timeout: float = 60.0) -> None:
        """Wait for ``expected_events`` submissions, write them and read the log."""
        if expected_events is not None:
            with self._cond:
                if not self._cond.wait_for(lambda: self._submitted >= expected_events,
                                           timeout):
                    raise RuntimeError(f"detection round: {self._submitted} of "
                                       f"{expected_events} events after {timeout:.0f} s")
        self.flush()
        self.runner.catch_up()

    def round(self, expected_events: int | None = None,
              timeout: float = 60.0) -> list[Action]:
        """``catch_up``, then one round; returns the actions it set.

        RuntimeError when ``expected_events`` were not all submitted within ``timeout``.
        """
        self.catch_up(expected_events, timeout)
        return self.runner.round()

    async def start(self) -> None:
        await asyncio.to_thread(self.runner.resume)

    async def close(self) -> None:
        await asyncio.to_thread(self.runner.catch_up, 5.0)
        await asyncio.to_thread(self.runner.close)


def timer_driver(runner: DetectionRunner, settings: Settings,
                 flush: Callable[[], object]) -> DetectionDriver:
    """The production driver factory."""
    return TimerDriver(runner, settings, flush)


def manual_driver(runner: DetectionRunner, settings: Settings,
                  flush: Callable[[], object]) -> DetectionDriver:
    """The driver factory for simulations and tests."""
    return ManualDriver(runner, settings, flush)
