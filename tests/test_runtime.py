"""The runtime never blocks its event loop: not on a stalled event writer, not on a
detection round over 100k accounts; and its parts are injected, typed and started once."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from conftest import ADMIN_TOKEN
from distillguard.detection.driver import TimerDriver
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.service import DetectionRunner
from distillguard.gateway.app import build_app
from distillguard.gateway.runtime import NotStarted, Runtime
from distillguard.policy.engine import PolicyEngine
from distillguard.policy.store import open_action_store
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.sqlite_store import SQLiteStore


class Ticker:
    """Counts how often a 50 ms timer on the event loop really fired."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.ticks = 0
        self.worst_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            self.worst_gap = max(self.worst_gap, now - last)
            last = now
            self.ticks += 1

    def __enter__(self) -> Ticker:
        self.started = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.elapsed = time.perf_counter() - self.started


class StalledStore(SQLiteStore):
    """A store whose event writes hang until ``release`` is set (a database gone away)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def write_events(self, events: list[RequestEvent]) -> None:
        self.release.wait()
        super().write_events(events)


async def test_a_stalled_writer_sheds_new_requests_and_the_loop_keeps_running(
        make_settings, tmp_path):
    settings = make_settings(event_queue_size=10, event_batch_size=1)
    store = StalledStore(settings.data_path)
    app = build_app(settings, store=store)
    try:
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            _, key = store.create_key("alice")
            transport = httpx.ASGITransport(app=app)
            client = openai.AsyncOpenAI(
                base_url="http://gw/v1", api_key=key, max_retries=0,
                http_client=httpx.AsyncClient(transport=transport, base_url="http://gw"))
            served, shed = 0, 0
            with Ticker() as ticker:
                for _ in range(40):
                    try:
                        await client.chat.completions.create(
                            model="echo", messages=[{"role": "user", "content": "hi"}])
                        served += 1
                    except openai.InternalServerError as exc:
                        assert exc.status_code == 503
                        assert exc.response.headers["retry-after"]
                        assert exc.body["code"] == "overloaded"
                        shed += 1
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as h:
                    health = await h.get("/healthz")
                    metrics = (await h.get("/metrics")).text
                await asyncio.sleep(0.3)
            assert health.status_code == 200
            assert "distillguard_events_backlogged 1" in metrics
            # The writer is stuck: once its queue filled, requests were refused up front.
            assert 10 <= served < 20 and shed == 40 - served
            assert ticker.worst_gap < 0.5
            store.release.set()
            assert await asyncio.to_thread(runtime.writer.flush, 10)
            events = list(store.iter_events())
            # Every served request's event is written; the refusals are too, up to the
            # overflow's size, and the rest are counted, never silently lost.
            assert sum(e.status == 200 for e in events) == served
            assert sum(e.status == 503 for e in events) + runtime.writer.shed == shed
    finally:
        store.release.set()
        store.close()


async def test_the_loop_keeps_running_while_detection_refreshes_100k_accounts(make_settings):
    settings = make_settings()
    pipeline = DetectionPipeline(settings)
    pipeline.observe_many([
        RequestEvent(ts=1.7e9 + i, request_id=f"r{i}", endpoint="/v1/chat/completions",
                     status=200, latency_ms=1.0, account="a0", key_id="k",
                     client_addr="192.0.2.1", user_agent="ua", model="m", params={},
                     prompt=f"user: question {i}", prompt_tokens=3, completion_tokens=10)
        for i in range(5)])
    # 100k tracked accounts: one account's state under many names, to build quickly.
    state = pipeline._accounts["a0"]
    for i in range(1, 100_000):
        pipeline._accounts[f"a{i}"] = state
    policy = PolicyEngine(open_action_store(settings), [])
    store = SQLiteStore(settings.data_path)
    runner = DetectionRunner.from_settings(settings, pipeline, store, policy=policy)
    driver = TimerDriver(runner, settings.replace(detection_interval=0.1), lambda: None)
    await driver.start()
    try:
        with Ticker() as ticker:
            reads = []
            while driver.snapshot.taken_at == 0.0:
                t0 = time.perf_counter()
                driver.snapshot.top(10)  # the last round's results, read without a lock
                reads.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)
        assert len(driver.snapshot.risks) == 100_000
        assert ticker.elapsed > 1.0  # the round really took a while
        # Fired at least half as often as asked while the round ran in its thread.
        assert ticker.ticks >= 0.5 * ticker.elapsed / ticker.period
        assert max(reads) < 0.05
    finally:
        await driver.close()
        policy.close()
        store.close()


async def test_parts_are_typed_and_exist_only_once_started(make_settings):
    runtime = Runtime(make_settings())
    with pytest.raises(NotStarted):
        runtime.store  # noqa: B018
    await runtime.start()
    try:
        assert runtime.store is not None and runtime.policy.clock is runtime.clock
        assert runtime.backend.models() == ["echo"]
    finally:
        await runtime.close()


async def test_admin_reads_the_last_rounds_snapshot(harness_factory):
    harness = await harness_factory(detection_interval=3600)
    async with harness.http(headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        r = await http.get("/admin/risk")
    assert r.status_code == 200 and r.json()["data"] == []  # no round has run yet


def test_key_checks_do_not_wait_for_a_scan_of_every_key(tmp_path):
    # Detection's round lists every key (sign-up times); at 100k keys that scan took
    # 192 ms, and every request's key check waited behind it on the same connection.
    store = SQLiteStore(tmp_path / "data")
    try:
        _, key = store.create_key("alice")
        with store._bulk_lock:  # a scan in progress, as long as we like
            t0 = time.perf_counter()
            assert store.lookup_key(key) is not None
            store.keys_version()
            assert time.perf_counter() - t0 < 0.5
    finally:
        store.close()
