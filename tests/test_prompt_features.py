"""Without prompt text (``retain_prompts = false``) the gateway derives the embedding
signals' prompt features before dropping the text, off the request path, in a bounded
queue; detection reads them and reaches the signal values it reaches with the text."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from distillguard.clock import ManualClock
from distillguard.detection.driver import ManualDriver, manual_driver
from distillguard.detection.elicitation import EXEMPLARS, Elicitation
from distillguard.detection.embedder import CachedEmbedder
from distillguard.detection.sketch import build_reference
from distillguard.detection.space import FEATURES_KEY, PromptSpace
from distillguard.gateway.app import build_app
from distillguard.gateway.prompt_features import PromptFeatureQueue
from distillguard.telemetry.events import RequestEvent

DIM = 24
TOPICS = 8
T0 = 1_750_000_000.0
MARKER = "zqxjv"  # in every prompt: it must not reach the event log
EMBEDDING_SIGNALS = ("coverage", "elicitation", "prompt_distribution")


class StandIn:
    """Deterministic unit vectors: 'topic K' near centre K, 'ponder' (no cue pattern
    names it) and the elicitation exemplars near one direction, noise from a stable
    hash of the text."""

    dim = DIM

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.centres = rng.standard_normal((TOPICS + 1, DIM))

    def embed(self, texts):
        out = []
        for t in texts:
            if t in EXEMPLARS or "ponder" in t:
                k = TOPICS
            else:
                words = t.split()
                k = int(words[1]) % TOPICS if words[:1] == ["topic"] else len(t) % TOPICS
            rng = np.random.default_rng(zlib.crc32(t.encode()))
            v = self.centres[k] + (0.05 if k == TOPICS else 0.4) * rng.standard_normal(DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def make_space(sample: float = 1.0, inner=None) -> PromptSpace:
    inner = inner or StandIn()
    embedder = CachedEmbedder(inner)
    centres = StandIn().centres[:TOPICS]
    rng = np.random.default_rng(3)
    ref = centres[rng.integers(TOPICS, size=600)] + 0.4 * rng.standard_normal((600, DIM))
    ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)).astype(np.float32)
    topic_map = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    return PromptSpace(embedder, topic_map=topic_map, sketch=build_reference(ref),
                       elicitation=Elicitation(embedder), sample=sample)


def prompts() -> list[tuple[str, str]]:
    """(account, last user message): a sweeper over two topics that often 'ponders',
    and a user spread over all topics."""
    out = []
    for i in range(64):
        ask = f"topic {i % 2} question {i} {MARKER}"
        if i % 3 == 0:
            ask += " please ponder it at length"
        out.append(("sweeper", ask))
        out.append(("spread", f"topic {i % TOPICS} other thing {i} {MARKER}"))
    return out


async def replay(make_settings, tmp_path: Path, retain: bool, sample: float, **extra):
    """Send the prompts through a gateway; returns (runtime values, events, data dir)."""
    data = tmp_path / ("with-text" if retain else "without-text")
    settings = make_settings(data_dir=str(data), retain_prompts=retain,
                             detection_embeddings=True, detection_embedding_sample=sample,
                             **extra)
    clock = ManualClock(T0)  # the same arrival times in both runs
    app = build_app(settings, driver=manual_driver, prompt_space=make_space(sample),
                    clock=clock)
    import httpx

    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        keys = {a: runtime.store.create_key(a)[1] for a in ("sweeper", "spread")}
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for i, (account, ask) in enumerate(prompts()):
                clock.advance(T0 + 20.0 * i + (i * 7919 % 13))
                r = await http.post("/v1/chat/completions", headers={
                    "Authorization": f"Bearer {keys[account]}"}, json={
                    "model": "echo", "max_tokens": 16,
                    "messages": [{"role": "system", "content": f"be brief {MARKER}"},
                                 {"role": "user", "content": ask}]})
                assert r.status_code == 200, r.text
        driver = runtime.driver
        assert isinstance(driver, ManualDriver)
        await asyncio.to_thread(driver.round, len(prompts()))
        pipeline = driver.pipeline
        values = {a: {r.signal: r.value for r in pipeline.signals_of(a)}
                  for a in ("sweeper", "spread")}
        states = {a: pipeline._accounts[a].states for a in ("sweeper", "spread")}
        topics = {a: dict(pipeline.profile_of(a).topics) for a in ("sweeper", "spread")}
        events = list(runtime.store.iter_events())
        metrics = dict((name, value) for name, _, _, value in runtime.gauges())
    return values, states, topics, events, data, metrics


@pytest.mark.parametrize("sample", [1.0, 0.5])
async def test_without_text_the_signals_read_what_the_gateway_derived(make_settings, tmp_path,
                                                                    sample):
    with_text = await replay(make_settings, tmp_path, True, sample)
    without = await replay(make_settings, tmp_path, False, sample)
    values, states, topics, events, data, metrics = without
    # (a) no prompt text anywhere in the log (nor in any file of the data folder)
    assert len(events) == len(prompts()) and all(e.prompt is None for e in events)
    for path in data.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path
    assert all(MARKER in (e.prompt or "") for e in with_text[3])  # the marker is real
    # (b) the derived values, for exactly the sampled share, and no embedding
    space = make_space(sample)
    derived = [e for e in events if FEATURES_KEY in e.features]
    asks = [ask for _, ask in prompts()]
    assert len(derived) == sum(space.sampled(a) for a in asks)
    assert 0 < len(derived) <= len(asks) and (sample == 1.0) == (len(derived) == len(asks))
    for e in derived:
        pe = e.features[FEATURES_KEY]
        assert set(pe) == {"v", "t", "s", "f"} and pe["v"] == space.tag
        assert 0 <= pe["t"] < TOPICS and -1.0 <= pe["s"] <= 1.0
        assert len(pe["f"]) == 4 * (2 * 128 + 2) // 3  # 128 int16, base64
    assert metrics["distillguard_prompt_features_derived_total"] == len(derived)
    assert metrics["distillguard_prompt_features_skipped_total"] == 0
    # (c) the same signal values as with the text (the sketch up to int16 rounding),
    # every signal, the timing ones too: the log keeps its order
    text_values, text_states, text_topics = with_text[:3]
    assert values.keys() == text_values.keys()
    assert [e.ts for e in events] == [e.ts for e in with_text[3]]  # the log's order
    for account in values:
        got, want = values[account], text_values[account]
        assert set(EMBEDDING_SIGNALS) <= set(got)
        assert {k: v for k, v in got.items() if k != "prompt_distribution"} == \
            {k: v for k, v in want.items() if k != "prompt_distribution"}
        assert got["coverage"] is not None and got["coverage"] == want["coverage"]
        assert got["elicitation"] == want["elicitation"]
        assert got["prompt_distribution"] is not None
        assert got["prompt_distribution"] == pytest.approx(want["prompt_distribution"],
                                                           abs=1e-6)
        assert topics[account] == text_topics[account]
    # The embedding judge counted (no cue pattern names 'ponder'), identically.
    assert text_values["sweeper"]["elicitation"] > 0
    # The states: coverage's topic histogram and the sketch's count agree too.
    for account in states:
        for got, want in zip(states[account], text_states[account]):
            if isinstance(want, list) and len(want) == 3 and isinstance(want[1], dict):
                assert got[:2] == want[:2]  # coverage: prompts, topic counts


def test_stored_values_from_another_space_are_ignored():
    space = make_space()
    [pe] = space.derive(["topic 3 what"])
    other = make_space()
    other.topic_map = other.topic_map[:4].copy()
    other._tag = None
    assert space.stored({FEATURES_KEY: pe}) is not None
    assert other.stored({FEATURES_KEY: pe}) is None
    assert space.stored({FEATURES_KEY: {**pe, "f": "!!"}}) is None
    assert space.stored({}) is None and space.stored(None) is None


class Gate:
    """An embedder that waits for ``release`` (the first call only), counting calls."""

    dim = DIM

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = threading.Event()
        self.inner = StandIn()

    def embed(self, texts):
        if not any(t in EXEMPLARS for t in texts):
            self.inside.set()
            assert self.release.wait(10)
        return self.inner.embed(texts)


def _event(i: int) -> RequestEvent:
    return RequestEvent(ts=1.0 + i, request_id=f"r{i}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=1.0, account="a", features={"h": i})


def test_a_full_queue_never_blocks_and_counts_what_it_skips():
    gate = Gate()
    written: list[RequestEvent] = []
    queue = PromptFeatureQueue(make_space(inner=gate), lambda e, served: written.append(e),
                               queue_size=2, batch_size=1)
    try:
        assert queue.offer(_event(0), "topic 1 a")
        assert gate.inside.wait(10)  # the thread holds the first, embedding
        assert queue.offer(_event(1), "topic 2 b") and queue.offer(_event(2), "topic 3 c")
        start = time.perf_counter()
        assert not queue.offer(_event(3), "topic 4 d")  # full: returned at once
        assert time.perf_counter() - start < 0.05
        assert queue.skipped == 1 and queue.pending == 3 and not written
        gate.release.set()
        assert queue.drain(10)
        assert [e.request_id for e in written] == ["r0", "r1", "r2"]
        assert all(FEATURES_KEY in e.features and e.features["h"] == int(e.request_id[1:])
                   for e in written)
        assert queue.derived == 3 and queue.pending == 0
    finally:
        gate.release.set()
        queue.close()


def test_events_without_a_prompt_to_embed_keep_their_place():
    gate = Gate()
    written: list[tuple[str, bool]] = []
    queue = PromptFeatureQueue(make_space(inner=gate),
                               lambda e, served: written.append((e.request_id, served)),
                               queue_size=4)
    try:
        assert not queue.offer(_event(0), "")  # nothing queued: the caller writes it
        assert queue.offer(_event(1), "topic 1 a")
        assert gate.inside.wait(10)
        assert queue.offer(_event(2), "", served=False)  # behind r1, in order
        assert queue.offer(_event(3), "topic 2 b")
        gate.release.set()
        assert queue.drain(10)
        assert written == [("r1", True), ("r2", False), ("r3", True)]
        assert queue.derived == 2 and queue.skipped == 0
        assert not queue.offer(_event(4), "")  # drained: written directly again
    finally:
        gate.release.set()
        queue.close()


def test_closing_hands_over_what_is_queued():
    gate = Gate()
    written: list[RequestEvent] = []
    queue = PromptFeatureQueue(make_space(inner=gate), lambda e, served: written.append(e),
                               queue_size=8, batch_size=1)
    assert queue.offer(_event(0), "topic 1 a")
    assert gate.inside.wait(10)
    for i in range(1, 4):
        assert queue.offer(_event(i), f"topic {i} x")
    threading.Timer(0.3, gate.release.set).start()
    queue.close(timeout=0.0)  # past its deadline: the rest go without features
    assert [e.request_id for e in written] == ["r0", "r1", "r2", "r3"]
    assert FEATURES_KEY in written[0].features
    assert not any(FEATURES_KEY in e.features for e in written[1:])
    assert queue.derived == 1 and queue.skipped == 3
    assert not queue.offer(_event(9), "topic 1 late") and queue.skipped == 4


async def test_full_queue_in_the_gateway_still_writes_every_event(make_settings, tmp_path):
    gate = Gate()
    settings = make_settings(retain_prompts=False, detection_embeddings=True,
                             prompt_features_queue=1)
    app = build_app(settings, driver=manual_driver, prompt_space=make_space(inner=gate))
    import httpx

    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        key = runtime.store.create_key("a")[1]
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                async def ask(i: int) -> float:
                    start = time.perf_counter()
                    r = await http.post("/v1/chat/completions",
                                        headers={"Authorization": f"Bearer {key}"},
                                        json={"model": "echo", "max_tokens": 4, "messages": [
                                            {"role": "user", "content": f"topic {i} q"}]})
                    assert r.status_code == 200
                    return time.perf_counter() - start

                await ask(0)
                assert await asyncio.to_thread(gate.inside.wait, 10)
                await ask(1)  # queued
                took = await ask(2)  # queue full: written without derived features
                assert took < 2.0  # not held back by the blocked embedding
                runtime.writer.flush()
                [early] = list(runtime.store.iter_events())
                assert FEATURES_KEY not in early.features
                gauges = {n: v for n, _, _, v in runtime.gauges()}
                assert gauges["distillguard_prompt_features_skipped_total"] == 1
                assert gauges["distillguard_prompt_features_pending"] == 2
        finally:
            gate.release.set()
        await asyncio.to_thread(runtime.driver.round, 3)
        events = list(runtime.store.iter_events())
        assert len(events) == 3 and all(e.prompt is None for e in events)
        assert sum(FEATURES_KEY in e.features for e in events) == 2
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            text = (await http.get("/metrics")).text
        assert "distillguard_prompt_features_skipped_total 1" in text


async def test_with_text_the_gateway_derives_nothing(make_settings):
    app = build_app(make_settings(detection_embeddings=True), driver=manual_driver,
                    prompt_space=make_space())
    async with app.router.lifespan_context(app):
        assert app.state.runtime.prompt_features is None


def test_a_detect_worker_reads_the_space_an_external_gateway_derives_in(make_settings):
    """detection_mode = external: the gateway builds its space from the settings, the
    `distillguard detect` worker its pipeline; their tags (and so the values) agree."""
    from distillguard.detection.worker import _pipeline

    class Wide:
        dim = 384

        def embed(self, texts):
            rng = np.random.default_rng(len(texts))
            x = rng.standard_normal((len(texts), 384))
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    settings = make_settings(detection_embeddings=True, retain_prompts=False)
    embedder = CachedEmbedder(Wide())
    gateway = PromptSpace.from_settings(settings, embedder=embedder)
    worker = _pipeline(settings, None, embedder)
    assert gateway is not None and worker.space is not None
    assert gateway.sketch is not None and gateway.topic_map is not None
    assert gateway.tag == worker.space.tag
    [pe] = gateway.derive(["a prompt"])
    topic, similarity, phi = worker.space.stored({FEATURES_KEY: pe})
    x = embedder.embed(["a prompt"])[0]
    want_topic, want_similarity, want_phi = worker.space.info(x)
    assert (topic, similarity) == (want_topic, want_similarity)
    assert np.max(np.abs(phi - want_phi)) < 1e-5
