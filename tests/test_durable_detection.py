"""Detection reads the durable event log: it survives restarts, resumes from checkpoints
without counting twice, warms up from history, and falls behind under a flood without
losing the harvest behind it."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from distillguard.detection.checkpoint import CheckpointError, dump_state, load_state, restore
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.gateway.app import build_app
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.store import open_store

TOPICS = ["photosynthesis", "binary search", "the French revolution", "compound interest",
          "TCP handshakes", "plate tectonics", "Bayes' theorem", "sorting networks"]


def harvest_prompt(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (f"Task #{i}: Explain {topic} step by step. Show your full chain of thought, "
            f"then grade the answer with a rubric from 1 to {i % 7 + 3} and output it as "
            "a JSON row.")


def long_echo():
    """An echo backend answering at a model's length (400 words a choice): detection
    measures what is taken, and a harvest answered in 16 words takes nothing."""
    from distillguard.backends.echo import EchoBackend

    return EchoBackend(tokens=400)


async def harvest(client: openai.AsyncOpenAI, i: int) -> bool:
    """One harvesting request; False once the gateway refuses the account."""
    try:
        await client.chat.completions.create(
            model="echo", max_tokens=512, temperature=0.7, n=2,
            messages=[{"role": "user", "content": harvest_prompt(i)}])
    except (openai.PermissionDeniedError, openai.RateLimitError):
        return False
    return True


def sdk(app, key: str) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport,
                                                            base_url="http://gateway"))


async def drain(runtime) -> None:
    await asyncio.to_thread(runtime.writer.flush)
    await asyncio.to_thread(runtime.runner.catch_up)
    await asyncio.to_thread(runtime.runner.round)


async def requests_until_refused(settings, *, restart_every: int | None,
                                 limit: int = 400, round_every: int = 5) -> int | None:
    """Harvest through a gateway (restarted every ``restart_every`` requests, with the
    same data), a detection round every ``round_every``; the request number refused."""
    with open_store(settings) as store:
        _, key = store.create_key("harvester")
    sent = 0
    while sent < limit:
        app = build_app(settings, backend=long_echo())
        async with app.router.lifespan_context(app):
            client = sdk(app, key)
            stop = sent + (restart_every or limit)
            while sent < min(stop, limit):
                sent += 1
                if not await harvest(client, sent):
                    return sent
                if sent % round_every == 0:
                    await drain(app.state.runtime)
    return None


async def test_restarts_more_often_than_detection_needs_do_not_blind_it(make_settings,
                                                                        tmp_path):
    """One gateway acts on the harvester after about 22 requests. Before the log, a
    gateway restarted every 10 requests (a rolling deploy) started cold each time and
    never acted within 400; now it resumes from its checkpoint and acts as soon."""
    def settings(name):
        return make_settings(data_dir=str(tmp_path / name), detection_interval=3600,
                             max_tokens_limit=512)

    base = await requests_until_refused(settings("one"), restart_every=None)
    restarted = await requests_until_refused(settings("restarted"), restart_every=10)
    assert base is not None and 10 < base < 200
    assert restarted is not None and restarted <= base + 5  # one round apart at most


def test_checkpoint_round_trip_keeps_counts_and_refuses_other_signals(make_settings):
    settings = make_settings()
    pipeline = DetectionPipeline(settings)
    for i in range(30):
        pipeline.observe(RequestEvent(ts=1000.0 + i, request_id=f"r{i}", endpoint="/v1/chat",
                                      status=200, latency_ms=5, account=f"a{i % 3}",
                                      client_addr="198.51.100.4", prompt=harvest_prompt(i),
                                      params={"max_tokens": 512}, completion_tokens=400))
    pipeline.refresh()
    blob = dump_state(pipeline, 30)
    fresh = DetectionPipeline(settings)
    assert restore(fresh, blob) == 30
    assert fresh.accounts() == pipeline.accounts()
    for a in pipeline.accounts():
        assert fresh.account_risk(a) == pipeline.account_risk(a)
    fewer = DetectionPipeline(settings, signals=[s.name for s in pipeline.signals][:2])
    with pytest.raises(CheckpointError, match="other signals"):
        load_state(blob, fewer)


def test_a_tampered_checkpoint_cannot_name_arbitrary_callables(make_settings):
    import pickle
    import zlib

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    blob = zlib.compress(pickle.dumps({"format": 1, "signals": [], "position": 0,
                                       "state": {"x": Evil()}}))
    with pytest.raises(CheckpointError, match="not allowed"):
        load_state(blob)


async def test_resume_counts_each_event_once_even_after_a_kill(make_settings):
    """Killed after observing past its checkpoint: the replacement re-reads from the
    checkpoint, so each event is counted exactly once."""
    from distillguard.detection.service import DetectionRunner

    settings = make_settings()
    store = open_store(settings)
    events = [RequestEvent(ts=time.time(), request_id=f"r{i}", endpoint="/v1/chat/completions",
                           status=200, latency_ms=3, account="acct", prompt=harvest_prompt(i))
              for i in range(50)]
    store.write_events(events[:20])
    first = DetectionRunner.from_settings(settings, DetectionPipeline(settings), store)
    first.resume()
    first.catch_up()
    first.checkpoint()
    store.write_events(events[20:35])
    first.catch_up()  # observed 35, checkpoint says 20: then "killed" (no close)
    store.write_events(events[35:])
    second = DetectionRunner.from_settings(settings, DetectionPipeline(settings), store)
    assert "resumed from the checkpoint at log position 20" in second.resume()
    second.catch_up()
    assert second.pipeline.account_risk("acct").events == 50
    second.close()
    first.checkpoints.close()
    third = DetectionRunner.from_settings(settings, DetectionPipeline(settings), store)
    third.resume()
    third.catch_up()
    assert third.pipeline.account_risk("acct").events == 50
    third.close()
    store.close()


def test_cold_start_warms_up_within_its_bound(make_settings):
    from distillguard.detection.service import DetectionRunner

    settings = make_settings(detection_warmup_hours=1.0, detection_warmup_events=30)
    store = open_store(settings)
    now = time.time()
    old = [RequestEvent(ts=now - 7200 + i, request_id=f"old{i}", endpoint="/v1/x", status=200,
                        latency_ms=1, account="a") for i in range(20)]
    recent = [RequestEvent(ts=now - 60 + i, request_id=f"new{i}", endpoint="/v1/x",
                           status=200, latency_ms=1, account="a") for i in range(40)]
    store.write_events(old + recent)
    runner = DetectionRunner.from_settings(settings, DetectionPipeline(settings), store)
    note = runner.resume()
    assert "warming up" in note and "30 events" in note
    runner.catch_up()
    assert runner.pipeline.account_risk("a").events == 30  # the event bound was tighter
    runner.close()
    store.close()


async def test_a_flood_in_front_of_a_harvest_delays_its_action_by_no_more_than_the_flood(
        make_settings):
    """Real timer (detection_interval 0.5 s): thousands of cheap requests from other
    accounts arrive first; none is dropped, and the harvester is acted on within the
    flood's duration plus one interval of its last request."""
    interval = 0.5
    settings = make_settings(detection_interval=interval, max_tokens_limit=512,
                             detection_checkpoint_interval=3600)
    app = build_app(settings, backend=long_echo())
    async with app.router.lifespan_context(app):
        gateway = app.state.runtime
        flood_keys = [gateway.store.create_key(f"flood{i}")[1] for i in range(20)]
        _, hkey = gateway.store.create_key("harvester")
        flooders = [sdk(app, k) for k in flood_keys]
        harvester = sdk(app, hkey)

        # At most 4 in flight per account: the gateway caps concurrency per account.
        slots = [asyncio.Semaphore(4) for _ in flooders]

        async def cheap(client, i):
            async with slots[i % 20]:
                await client.chat.completions.create(
                    model="echo", max_tokens=1,
                    messages=[{"role": "user", "content": f"hi {i}"}])

        flood_start = time.monotonic()
        await asyncio.gather(*(cheap(flooders[i % 20], i) for i in range(3000)))
        flood_s = time.monotonic() - flood_start
        for i in range(80):
            if not await harvest(harvester, i):
                break
        last = time.monotonic()
        deadline = last + flood_s + interval + 5.0
        while gateway.policy.current_action("harvester") is None:
            assert time.monotonic() < deadline, "harvester never acted on"
            await asyncio.sleep(0.05)
        delay = time.monotonic() - last
        assert delay <= flood_s + interval + 1.0, (delay, flood_s)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as http:
            text = (await http.get("/metrics")).text
        assert "distillguard_detection_lag_events" in text
        gateway.writer.flush()
        await asyncio.to_thread(gateway.runner.catch_up)
        assert gateway.detection.account_risk("flood0").events == 150  # none dropped


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_tailer_sees_every_event_of_concurrent_writers_exactly_once(kind, request, tmp_path):
    """Two processes' stores write batches at once while a reader tails by id: ids grow
    in commit order, so the tailer never skips an event that commits late."""
    import threading

    from distillguard.config import Settings

    dsn = request.getfixturevalue("pg_dsn") if kind == "postgres" else ""
    settings = Settings.load(env={}, data_dir=str(tmp_path), store=kind, postgres_dsn=dsn)
    writers = [open_store(settings) for _ in range(2)]
    reader = open_store(settings)
    seen: list[str] = []
    done = threading.Event()

    def write(store, tag):
        for b in range(40):
            store.write_events([RequestEvent(ts=1.0, request_id=f"{tag}-{b}-{i}",
                                             endpoint="/v1/x", status=200, latency_ms=1,
                                             account=tag) for i in range(10)])

    threads = [threading.Thread(target=write, args=(s, t)) for s, t in zip(writers, "ab")]
    for t in threads:
        t.start()

    def tail():
        position = 0
        while True:
            finished = done.is_set()
            batch = reader.events_after(position, 7)
            for pos, event in batch:
                assert pos > position
                position = pos
                seen.append(event.request_id)
            if finished and not batch:
                return

    tailer = threading.Thread(target=tail)
    tailer.start()
    for t in threads:
        t.join()
    done.set()
    tailer.join()
    assert len(seen) == 800 and len(set(seen)) == 800
    assert reader.last_event_id() >= 800
    for s in (*writers, reader):
        s.close()
