"""``Gateway``: everything one running gateway holds, on the app object, never global."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distillguard.backends.base import Backend
from distillguard.config import Settings
from distillguard.gateway.context import RequestContext
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.schema import Limits

log = logging.getLogger("distillguard.gateway")

SIM_TIME_HEADER = b"x-distillguard-sim-time"


class SimClock:
    """Simulation mode's clock: the latest simulated time a request carried.

    Requests of one simulated instant may arrive out of order, so the clock never runs
    backwards; before the first simulated request it reads the wall clock.
    """

    def __init__(self) -> None:
        self.now: float | None = None

    def arrival(self, header: str | None, default: float) -> float:
        """A request's simulated arrival time from its header (``default`` when the
        header is missing or not a number); the clock moves forward to it."""
        try:
            return self.advance(float(header)) if header else default
        except ValueError:
            return default

    def advance(self, ts: float) -> float:
        """Move the clock forward to ``ts`` (never back); returns ``ts``."""
        if self.now is None or ts > self.now:
            self.now = ts
        return ts

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


def backend_from_settings(settings: Settings) -> Backend:
    """The backend the settings name, from the backend registry (imported lazily)."""
    from distillguard.backends.base import backend_from_settings as build

    return build(settings)


class Gateway:
    """The parts of one gateway and their lifecycle.

    Anything not passed in is built from ``settings`` at ``start``: tests hand in a
    small backend or an in-memory store; ``distillguard serve`` hands in nothing.

    ``simulation`` (only ever a keyword of ``build_app``, never a setting, so that no
    production configuration can turn it on): requests may carry their simulated arrival
    time in the ``X-Distillguard-Sim-Time`` header, detection and policy read that
    clock, and the simulator drives detection rounds with ``simulation_round`` instead
    of the timer.
    """

    def __init__(self, settings: Settings, *, backend: Backend | None = None,
                 store: Any = None, watermark: Any = None, simulation: bool = False) -> None:
        self.settings = settings
        self.simulation = simulation
        self.clock: Any = SimClock() if simulation else time.time
        self._sim_queued = 0  # events ever recorded with an account (simulation_round)
        self.backend = backend
        self.store = store
        self.watermark = watermark
        self.metrics = Metrics()
        self.started_at = time.time()
        from distillguard.gateway.clientaddr import ClientAddress

        self.client_address = ClientAddress(settings.trust_forwarded_for,
                                            settings.trusted_proxies)
        self.limits = Limits(settings.max_tokens_limit, settings.default_max_tokens,
                             settings.max_n)
        self.keys: Any = None
        self.writer: Any = None
        self.limiter: Any = None
        self.policy: Any = None
        self.detection: Any = None
        self.runner: Any = None  # DetectionRunner: detection's reader of the event log
        self._nats: Any = None  # NatsLink when event_stream = nats
        self._detect_task: asyncio.Task | None = None
        self._owns_store = store is None
        self._pending_tokens: set[asyncio.Task] = set()

    async def start(self) -> None:
        from distillguard.telemetry.keycache import KeyCache
        from distillguard.telemetry.store import open_store
        from distillguard.telemetry.writer import EventWriter

        settings = self.settings
        if self.store is None:
            self.store = await asyncio.to_thread(open_store, settings)
        self.keys = KeyCache(self.store, ttl=settings.key_cache_ttl)
        log_store = self.store
        if settings.event_stream == "nats":
            # The writer publishes each committed batch to JetStream for detect workers.
            from distillguard.detection.jetstream import NatsLink, PublishingStore

            self._nats = await asyncio.to_thread(NatsLink, settings.nats_url.reveal())
            log_store = await asyncio.to_thread(PublishingStore, self.store, self._nats,
                                                settings)
        self.writer = EventWriter.from_settings(log_store, settings)
        if settings.rate_limit_rpm or settings.rate_limit_tpm:
            from distillguard.policy.ratelimit import RateLimiter, open_rate_store

            self.limiter = RateLimiter(open_rate_store(settings), rpm=settings.rate_limit_rpm,
                                       tpm=settings.rate_limit_tpm)
        from distillguard.policy.engine import PolicyEngine

        self.policy = await asyncio.to_thread(PolicyEngine.from_settings, settings)
        if settings.detection and settings.detection_mode == "inprocess":
            await self._start_detection()
        if self.backend is None:
            self.backend = backend_from_settings(settings)
        if self.watermark is None and getattr(self.backend, "watermarks", False):
            from distillguard.watermark.service import WatermarkService

            self.watermark = await asyncio.to_thread(WatermarkService.from_settings, settings)
        await self.backend.start()

    async def _start_detection(self) -> None:
        """Detection reading the event store as its log, resumed from its checkpoint."""
        from distillguard.detection.pipeline import DetectionPipeline
        from distillguard.detection.service import DetectionRunner

        settings = self.settings
        self.detection = await asyncio.to_thread(DetectionPipeline.from_settings, settings,
                                                 store=self.store)
        if self.simulation:
            self.detection.clock = self.policy.clock = self.clock
        self.runner = DetectionRunner.from_settings(settings, self.detection, self.store,
                                                    policy=self.policy, clock=self.clock)
        await asyncio.to_thread(self.runner.resume)
        if not self.simulation:
            self._detect_task = asyncio.get_running_loop().create_task(
                self.runner.run(settings.detection_interval,
                                settings.detection_checkpoint_interval))

    def simulation_round(self, expected_events: int, timeout: float = 60.0) -> list[Any]:
        """Simulation mode: once ``expected_events`` events in all have been recorded,
        write them, let detection read them from the log and run one round; returns the
        actions set.

        The simulator calls it (from any thread) at each simulated detection interval,
        after every response of the interval came back: an event is recorded just after
        its response's last byte, hence the wait.
        """
        if not self.simulation or self.detection is None:
            raise RuntimeError("simulation_round needs a gateway built with simulation=True "
                               "and detection on")
        deadline = time.monotonic() + timeout
        while self._sim_queued < expected_events:
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulation_round: {self._sim_queued} of "
                                   f"{expected_events} events recorded after {timeout:.0f} s")
            time.sleep(0.002)
        self.writer.flush()
        self.runner.catch_up()
        return self.run_detection()

    def run_detection(self) -> list[Any]:
        """One round of campaign clustering and rules; returns the actions set."""
        return self.runner.round()

    async def close(self) -> None:
        if self._detect_task is not None:
            self._detect_task.cancel()
            try:
                await self._detect_task
            except asyncio.CancelledError:
                pass
        if self.backend is not None:
            await self.backend.close()
        if self._pending_tokens:
            await asyncio.gather(*self._pending_tokens, return_exceptions=True)
        if self.limiter is not None:
            await self.limiter.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self._nats is not None:
            await asyncio.to_thread(self._nats.close)
        if self.runner is not None:
            # Read what the writer just wrote, so the last checkpoint covers it all.
            await asyncio.to_thread(self.runner.catch_up, 5.0)
            await asyncio.to_thread(self.runner.close)
        if self.policy is not None:
            self.policy.close()
        if self._owns_store and self.store is not None:
            self.store.close()

    def settle_tokens(self, work: Any) -> None:
        """Run a rate-limit token update off the request path (``close`` awaits it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending_tokens.add(task)
        task.add_done_callback(self._pending_tokens.discard)

    def record(self, ctx: RequestContext) -> None:
        """Account for a finished API request: metrics, rate-limit tokens, its event."""
        self.metrics.observe(ctx.endpoint, ctx.status, ctx.elapsed(),
                             prompt_tokens=ctx.prompt_tokens,
                             completion_tokens=ctx.completion_tokens,
                             error_type=ctx.error_type)
        used = ctx.prompt_tokens + ctx.completion_tokens
        if self.limiter is not None and ctx.key_id is not None and used \
                and not ctx.tokens_reserved:
            self.settle_tokens(self.limiter.add_tokens(ctx.key_id, used))
        if not self.settings.retain_prompts:
            ctx.prompt = None
        event = ctx.event()
        if self.writer is not None:
            self.writer.submit(event)
        if event.account is not None:
            # Detection reads the event from the store, never from here.
            self._sim_queued += 1
