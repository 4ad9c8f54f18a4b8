"""``Runtime``: every part of one running gateway, typed by its protocol, on the app object.

One factory builds it (``Runtime(settings, ...)`` then ``await start()``): anything not
passed in is built from the settings. Production passes nothing; tests hand in a small
backend or store; the simulator hands in a ``ManualClock`` and the ``manual_driver``
so that detection rounds run at simulated instants. No part of the request path knows
whether it is simulated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from distillguard.backends.base import Backend, backend_from_settings
from distillguard.clock import Clock, wall_clock
from distillguard.config import Settings
from distillguard.detection.driver import DetectionDriver, DriverFactory, timer_driver
from distillguard.detection.snapshot import EMPTY, DetectionSnapshot
from distillguard.gateway.clientaddr import ClientAddress
from distillguard.gateway.context import RequestContext
from distillguard.gateway.limits import ConcurrencyLimiter
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.schema import Limits

if TYPE_CHECKING:
    from distillguard.detection.jetstream import NatsLink
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.detection.service import DetectionRunner
    from distillguard.detection.space import PromptSpace
    from distillguard.gateway.prompt_features import PromptFeatureQueue
    from distillguard.policy.engine import PolicyEngine
    from distillguard.policy.ratelimit import RateLimiter
    from distillguard.signup.service import SignupService
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.keycache import KeyCache
    from distillguard.telemetry.store import Store
    from distillguard.telemetry.writer import EventWriter
    from distillguard.watermark.service import WatermarkService

log = logging.getLogger("distillguard.gateway")

# (name, type, help, value) series for /metrics, unlabelled.
Gauge = tuple[str, str, str, float]
GaugeSource = Callable[[], list[Gauge]]
T = TypeVar("T")


class NotStarted(RuntimeError):
    """A part of the runtime was used before ``start()`` built it."""


def _started(part: T | None, name: str) -> T:
    """A part that ``start()`` builds, or ``NotStarted`` naming it."""
    if part is None:
        raise NotStarted(f"runtime.{name} before start()")
    return part


class Runtime:
    """The parts of one gateway and their lifecycle.

    ``clock`` is the time every part reads (events, policy, detection). ``driver``
    makes the detection driver: ``timer_driver`` (production) or ``manual_driver``
    (the simulator and tests run rounds themselves). With ``detection_mode = external``
    no detection runs here: ``distillguard detect`` reads the log and sets actions in
    the shared policy store, which admission reads.
    """

    def __init__(self, settings: Settings, *, backend: Backend | None = None,
                 store: Store | None = None, watermark: WatermarkService | None = None,
                 clock: Clock = wall_clock, driver: DriverFactory = timer_driver,
                 prompt_space: PromptSpace | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.started_at = time.time()
        self.client_address = ClientAddress(settings.trust_forwarded_for,
                                            settings.trusted_proxies)
        self.limits = Limits(settings.max_tokens_limit, settings.default_max_tokens,
                             settings.max_n)
        self.limiter: RateLimiter | None = None
        self.concurrency = ConcurrencyLimiter(settings.max_concurrent_per_account)
        self.signup: SignupService | None = None  # set by build_app
        self.detection: DetectionPipeline | None = None
        self.runner: DetectionRunner | None = None  # detection's reader of the log
        self.driver: DetectionDriver | None = None
        self._nats: NatsLink | None = None  # when event_stream = nats
        self.watermark = watermark
        self._backend = backend
        self._store = store
        self._owns_store = store is None
        self._driver_factory = driver
        # The embedding space detection reads prompts in (built from the settings when
        # None); with retain_prompts off the gateway derives prompt features in it.
        self._prompt_space = prompt_space
        self.prompt_features: PromptFeatureQueue | None = None
        self._keys: KeyCache | None = None
        self._writer: EventWriter | None = None
        self._policy: PolicyEngine | None = None
        self._pending_tokens: set[asyncio.Task[None]] = set()
        self._gauge_sources: list[GaugeSource] = []

    # --- parts (typed, present once started) -------------------------------------------
    @property
    def backend(self) -> Backend:
        return _started(self._backend, "backend")

    @property
    def store(self) -> Store:
        return _started(self._store, "store")

    @property
    def keys(self) -> KeyCache:
        return _started(self._keys, "keys")

    @property
    def writer(self) -> EventWriter:
        return _started(self._writer, "writer")

    @property
    def policy(self) -> PolicyEngine:
        return _started(self._policy, "policy")

    @property
    def snapshot(self) -> DetectionSnapshot:
        """The last detection round's results; read without any lock."""
        return self.driver.snapshot if self.driver is not None else EMPTY

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from distillguard.policy.engine import PolicyEngine
        from distillguard.telemetry.keycache import KeyCache
        from distillguard.telemetry.store import open_store
        from distillguard.telemetry.writer import EventWriter

        settings = self.settings
        if self._store is None:
            self._store = await asyncio.to_thread(open_store, settings)
        store = self._store
        self._keys = KeyCache(store, ttl=settings.key_cache_ttl)
        log_store: Store = store
        if settings.event_stream == "nats":
            # The writer publishes each committed batch to JetStream for detect workers.
            from distillguard.detection.jetstream import NatsLink, PublishingStore

            self._nats = await asyncio.to_thread(NatsLink, settings.nats_url.reveal())
            log_store = await asyncio.to_thread(PublishingStore, store, self._nats, settings)
        writer = EventWriter.from_settings(log_store, settings)
        self._writer = writer
        if settings.rate_limit_rpm or settings.rate_limit_tpm:
            from distillguard.policy.ratelimit import RateLimiter, open_rate_store

            self.limiter = RateLimiter(open_rate_store(settings), rpm=settings.rate_limit_rpm,
                                       tpm=settings.rate_limit_tpm)
        policy = await asyncio.to_thread(PolicyEngine.from_settings, settings)
        policy.clock = self.clock
        self._policy = policy
        if settings.detection and settings.detection_mode == "inprocess":
            from distillguard.detection.pipeline import DetectionPipeline
            from distillguard.detection.service import DetectionRunner

            detection = await asyncio.to_thread(DetectionPipeline.from_settings, settings,
                                                store=store, space=self._prompt_space)
            detection.clock = self.clock
            self.detection = detection
            self.runner = DetectionRunner.from_settings(settings, detection, store,
                                                        policy=policy, clock=self.clock)
            self.driver = self._driver_factory(self.runner, settings, self._flush)
            await self.driver.start()
        await asyncio.to_thread(self._start_prompt_features)
        if self._backend is None:
            self._backend = backend_from_settings(settings)
        if self.watermark is None and getattr(self._backend, "watermarks", False):
            from distillguard.watermark.service import WatermarkService

            self.watermark = await asyncio.to_thread(WatermarkService.from_settings, settings)
        await self._backend.start()
        backend_gauges = getattr(self._backend, "gauges", None)
        if callable(backend_gauges):
            self.add_gauges(backend_gauges)

    def _start_prompt_features(self) -> None:
        """With retain_prompts off and detection embedding prompts: the queue that
        derives their features before the text is dropped (``gateway.prompt_features``)."""
        settings = self.settings
        if settings.retain_prompts or not settings.detection \
                or not settings.prompt_features_queue:
            return
        space = self._prompt_space
        if space is None and self.detection is not None:
            space = self.detection.space  # one model and one cache with detection
        if space is None and self.detection is None:
            from distillguard.detection.space import PromptSpace

            space = PromptSpace.from_settings(settings)  # detection runs elsewhere
        if space is None:
            return
        from distillguard.gateway.prompt_features import PromptFeatureQueue

        self.prompt_features = PromptFeatureQueue(space, self._emit,
                                                  queue_size=settings.prompt_features_queue)

    def _flush(self) -> object:
        """Write every event recorded so far: those awaiting derived features first."""
        if self.prompt_features is not None:
            self.prompt_features.drain()
        return self.writer.flush()

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()
        if self._pending_tokens:
            await asyncio.gather(*self._pending_tokens, return_exceptions=True)
        if self.limiter is not None:
            await self.limiter.close()
        if self.prompt_features is not None:
            await asyncio.to_thread(self.prompt_features.close)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self._nats is not None:
            await asyncio.to_thread(self._nats.close)
        if self.driver is not None:
            await self.driver.close()
        if self._policy is not None:
            self._policy.close()
        if self._owns_store and self._store is not None:
            self._store.close()

    # --- per request --------------------------------------------------------------------
    def new_context(self, endpoint: str, client_addr: str | None,
                    user_agent: str | None) -> RequestContext:
        """A request's context, timed by the runtime's clock."""
        return RequestContext(endpoint, client_addr, user_agent, ts=self.clock())

    def settle_tokens(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a rate-limit token update off the request path (``close`` awaits it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending_tokens.add(task)
        task.add_done_callback(self._pending_tokens.discard)

    def record(self, ctx: RequestContext) -> None:
        """Account for a finished API request: metrics, rate-limit tokens, its event.

        Called on the event loop; nothing here waits for a lock, a queue or the store.
        """
        self.metrics.observe(ctx.endpoint, ctx.status, ctx.elapsed(),
                             prompt_tokens=ctx.prompt_tokens,
                             completion_tokens=ctx.completion_tokens,
                             error_type=ctx.error_type)
        used = ctx.prompt_tokens + ctx.completion_tokens
        if self.limiter is not None and ctx.key_id is not None and used \
                and not ctx.tokens_reserved:
            self.settle_tokens(self.limiter.add_tokens(ctx.key_id, used))
        event = ctx.event(retain_prompts=self.settings.retain_prompts)
        served = ctx.status < 400 or used > 0
        queue = self.prompt_features
        if queue is not None and event.account is not None:
            # Detection reads served requests' prompts only.
            text = queue.space.to_derive(ctx.prompt, ctx.features) if ctx.status == 200 \
                else ""
            # The queue writes the event (in order behind those it holds), or declines.
            if queue.offer(event, text, served=served):
                return
        if self._writer is not None:
            self._writer.offer(event, served=served)
        if self.driver is not None and event.account is not None:
            self.driver.submit(event)

    def _emit(self, event: RequestEvent, served: bool) -> None:
        """An event back from the prompt-feature queue (its thread): to the log."""
        self.writer.offer(event, served=served)
        if self.driver is not None and event.account is not None:
            self.driver.submit(event)

    def add_gauges(self, source: GaugeSource) -> None:
        """Show ``source()``'s series on ``/metrics`` too (the HTTP server's connection
        guard, which lives outside the app). Series must carry no client-chosen labels."""
        if source not in self._gauge_sources:
            self._gauge_sources.append(source)

    def gauges(self) -> list[tuple[str, str, str, float]]:
        """The series for ``/metrics`` beyond requests: event writer, the local backend's
        queue, and what ``add_gauges`` registered."""
        out: list[tuple[str, str, str, float]] = []
        if self._writer is not None:
            out += [
                ("distillguard_events_pending", "gauge",
                 "Events accepted and not yet written to the store.", self._writer.pending),
                ("distillguard_events_backlogged", "gauge", "1 while the event writer is "
                 "backlogged and new API requests are refused with 503.",
                 float(self._writer.backlogged)),
                ("distillguard_events_shed_total", "counter", "Events of refused requests "
                 "dropped under the writer's overflow policy.", self._writer.shed),
            ]
        queue = self.prompt_features
        if queue is not None:
            out += [
                ("distillguard_prompt_features_pending", "gauge", "Events held for their "
                 "derived prompt features, or in order behind one that is (retain_prompts "
                 "off).", float(queue.pending)),
                ("distillguard_prompt_features_derived_total", "counter", "Events written "
                 "with derived prompt features instead of prompt text.",
                 float(queue.derived)),
                ("distillguard_prompt_features_skipped_total", "counter", "Sampled prompts "
                 "whose events were written without derived features (queue full, "
                 "shutdown or an embedding failure).", float(queue.skipped)),
            ]
        for source in self._gauge_sources:
            out += source()
        return out
