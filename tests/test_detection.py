"""Harvest detection: readable risk for a harvester, none for heavy legitimate use,
a swarm found as a campaign, and every registered signal loads."""

from __future__ import annotations

import random

import numpy as np
import pytest

from distillguard.detection.elicitation import EXEMPLARS
from distillguard.detection.embedder import CachedEmbedder
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.signals import (
    SIGNALS,
    Signal,
    create_signal,
    register_signal,
    signal_names,
)
from distillguard.detection.text import skeleton_words, template_bands
from distillguard.policy.rules import DEFAULT_RULES
from distillguard.telemetry.events import RequestEvent

T0 = 1_700_000_000.0
TOPICS = ["gardening tomatoes", "python decorators", "roman history", "tax deductions",
          "marathon training", "wedding speech", "linear algebra", "cat nutrition",
          "excel formulas", "french verbs", "kubernetes pods", "sourdough bread"]


def event(account: str, ts: float, prompt: str, *, out: int = 200, inp: int = 60,
          params: dict | None = None, addr: str = "203.0.113.9", ua: str = "Mozilla/5.0",
          latency_ms: float = 1500.0, i: int = 0) -> RequestEvent:
    return RequestEvent(ts=ts, request_id=f"{account}-{i}-{ts}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=latency_ms, account=account, client_addr=addr,
                        user_agent=ua, params=params or {}, prompt=prompt, prompt_tokens=inp,
                        completion_tokens=out)


def harvester(n: int = 200) -> list[RequestEvent]:
    rnd = random.Random(1)
    return [event("harvest", T0 + 2.0 * i,
                  f"user: Think step by step and show your reasoning before the final answer: "
                  f"how many {rnd.choice(TOPICS)} facts fit in {rnd.randint(2, 900)} lines?",
                  out=1500, inp=40, params={"max_tokens": 4096, "temperature": 0.7},
                  ua="python-httpx/0.27", latency_ms=8000, i=i) for i in range(n)]


def person(name: str, n: int, rnd: random.Random, *, scale: float = 1.0) -> list[RequestEvent]:
    out, ts = [], T0 + rnd.uniform(0, 600)
    for i in range(n):
        ts += rnd.expovariate(1 / (90 * scale)) + (rnd.random() < 0.1) * rnd.uniform(600, 3000)
        topic = rnd.choice(TOPICS)
        words = " ".join(rnd.choice(["why", "how", "does", "my", "the", "best", "quick",
                                     "again", "really", "it", topic]) for _ in range(9))
        turn = (f"user: tell me about {topic}\nassistant: sure, here goes\nuser: {words}"
                if rnd.random() < 0.5 else f"user: {words} {topic}?")
        out.append(event(name, ts, turn, out=int(rnd.lognormvariate(5.3, 0.6)),
                         inp=rnd.randint(20, 400),
                         params={"temperature": rnd.choice([0.7, 1.0]), "max_tokens": 1024},
                         addr=f"198.51.{rnd.randint(0, 200)}.{rnd.randint(1, 250)}", i=i))
    return out


def population(rnd: random.Random, users: int = 25) -> list[RequestEvent]:
    events = []
    for u in range(users):
        events += person(f"user{u}", rnd.randint(25, 60), rnd)
    return events


def run(events: list[RequestEvent], **kwargs) -> DetectionPipeline:
    pipeline = DetectionPipeline(**kwargs)
    for e in sorted(events, key=lambda e: e.ts):
        pipeline.observe(e)
    pipeline.refresh()
    return pipeline


def test_every_registered_signal_loads_and_reports():
    names = signal_names()
    assert {"elicitation", "templating", "coverage", "regularity", "parallelism",
            "request_rate", "output_ratio", "logprobs", "multi_choice"} <= set(names)
    for name in names:
        signal = create_signal(name)
        assert isinstance(signal, Signal) and signal.name == name
        state = signal.new_state()
        assert signal.value(state) is None  # no data yet: nothing to say


def test_third_party_signal_registers_like_builtins():
    class Weekend:
        name = "test_weekend"
        group = "automation"
        weight = 0.1
        description = "test"

        def __init__(self, settings=None): ...
        def new_state(self): return [0]
        def observe(self, state, f): state[0] += 1
        def value(self, state): return float(state[0])
        def strength(self, value, baseline): return 0.0
        def explain(self, value, baseline): return f"{value} events"

    with SIGNALS.temporarily("test_weekend", Weekend):
        assert "test_weekend" in signal_names()
        assert create_signal("test_weekend").explain(3.0, None) == "3.0 events"
        with pytest.raises(ValueError, match="already registered"):
            register_signal(type("Other", (), {"name": "test_weekend"}))
    assert "test_weekend" not in signal_names()


def test_templates_match_after_masking_numbers_names_quotes():
    a = 'user: Translate "good morning" for Alice, who is 31, into French.'
    b = 'user: Translate "see you tomorrow" for Bob, who is 7, into French.'
    c = "user: what should I plant in a shady garden in late autumn?"
    assert skeleton_words(a[6:]) == skeleton_words(b[6:])
    assert set(template_bands(a[6:])) == set(template_bands(b[6:]))
    assert not set(template_bands(a[6:])) & set(template_bands(c[6:]))


def test_harvester_gets_high_risk_with_readable_reasons():
    rnd = random.Random(7)
    pipeline = run(population(rnd) + harvester())
    risk = pipeline.account_risk("harvest")
    block = next(r for r in DEFAULT_RULES if r.name == "block-harvester")
    assert risk.risk >= block.min_risk  # the default (calibrated) rules block it
    by_signal = {r.signal: r for r in risk.reasons}
    assert {"elicitation", "long_completions", "max_tokens_max", "regularity"} <= set(by_signal)
    # Each reason names the value and the population it was held to.
    assert "population median" in by_signal["output_rate"].message
    assert "100%" in by_signal["elicitation"].message
    ranked = pipeline.ranked(limit=3)
    assert ranked[0].account == "harvest"


def test_benign_users_and_heavy_legitimate_users_stay_low():
    rnd = random.Random(11)
    events = population(rnd, users=30)
    # An evaluation harness: templated, parallel, clockwork, logprobs, tiny answers.
    events += [event("evals", T0 + 0.5 * i,
                     f"user: Question: which is true of {TOPICS[i % 12]} item {i}?\n"
                     f"A) one B) two C) three D) four\nAnswer:", out=1, inp=80,
                     params={"temperature": 0, "max_tokens": 1, "logprobs": True},
                     ua="lm-eval/0.4", latency_ms=4000, i=i) for i in range(1500)]
    # A team sharing one key: many people's traffic interleaved.
    for member in range(8):
        events += [e for e in person("team", 60, random.Random(member), scale=0.5)]
    pipeline = run(events)
    for account in ["evals", "team"] + [f"user{u}" for u in range(30)]:
        assert pipeline.account_risk(account).risk < 0.6, pipeline.account_risk(account)


def test_swarm_under_rate_limits_is_found_as_a_campaign():
    rnd = random.Random(3)
    events = population(rnd, users=30)
    for m in range(20):
        ts = T0 + rnd.uniform(0, 60)
        for i in range(30):
            ts += rnd.uniform(50, 70)  # ~1 request a minute: under any rate limit
            events.append(event(
                f"swarm{m}", ts, f"user: You are a tutor. Explain step by step, with all "
                f"reasoning: {TOPICS[(m + i) % 12]} question number {rnd.randint(1, 99999)}",
                out=900, inp=50, params={"max_tokens": 2048, "temperature": 0.8},
                addr=f"192.0.{rnd.randint(0, 255)}.{rnd.randint(1, 250)}",
                ua="python-requests/2.31", latency_ms=6000, i=i))
    pipeline = run(events)
    campaigns = pipeline.campaigns()
    assert campaigns, "no campaign found"
    top = campaigns[0]
    assert {f"swarm{m}" for m in range(20)} <= set(top.members)
    assert not any(a.startswith("user") for a in top.members)
    assert any(e.kind == "shared_template" for e in top.evidence)
    assert top.risk >= 0.5  # the default campaign rule throttles from 0.5
    member = pipeline.account_risk("swarm4")
    assert member.campaign == top.campaign_id and member.risk >= top.risk
    assert member.reasons[0].signal == "campaign"


class FakeEmbedder:
    """Deterministic unit vectors: one direction per topic word found in the text."""

    dim = 16

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            hit = next((k for k, t in enumerate(TOPICS) if t in text), 12 + len(text) % 4)
            out[i, hit] = 1.0
        return out


def test_coverage_separates_a_topic_sweep_from_a_focused_user():
    topic_map = np.eye(16, dtype=np.float32)
    embedder = CachedEmbedder(FakeEmbedder())
    sweep = [event("sweeper", T0 + 30 * i, f"user: explain {TOPICS[i % 12]} #{i}", i=i)
             for i in range(120)]
    focused = [event("focused", T0 + 30 * i, f"user: more on {TOPICS[i % 2]} #{i}", i=i)
               for i in range(120)]
    pipeline = run(sweep + focused, embedder=embedder, topic_map=topic_map)
    values = {r.signal: r.value for r in pipeline.signals_of("sweeper")}
    assert values["coverage"] > 0.85
    assert {r.signal: r.value for r in pipeline.signals_of("focused")}["coverage"] < 0.3
    # Every distinct prompt embedded once, plus the elicitation exemplars once.
    assert embedder.misses == 240 + len(EXEMPLARS) and embedder.hits == 0
    # Reported, not scored (see CoverageSignal): the sweep's even spread is shown to
    # the analyst, but it is neither a reason nor part of the risk.
    reading = next(r for r in pipeline.signals_of("sweeper") if r.signal == "coverage")
    assert reading.strength > 0.9
    assert "coverage" not in {r.signal for r in pipeline.account_risk("sweeper").reasons}


def test_memory_is_bounded_per_account():
    pipeline = run(harvester(3000))
    state = pipeline._accounts["harvest"]
    templating = state.states[pipeline.signals.index(
        next(s for s in pipeline.signals if s.name == "templating"))]
    assert len(templating[2]) <= 512 + 8
    assert len(state.profile.bands) <= 64 and len(state.profile.sketch) <= 32


def test_a_fixed_wrapper_around_varying_questions_is_a_template():
    from distillguard.detection.text import template_features

    wrap = "Explain in detail, reasoning step by step:\n{}"
    a = wrap.format("how do I keep sourdough starter alive through a hot summer week")
    b = wrap.format("what makes kubernetes pods restart when the node runs short of memory")
    bands_a, wrappers_a = template_features(a)
    bands_b, wrappers_b = template_features(b)
    assert not set(bands_a) & set(bands_b)  # whole-prompt MinHash does not see it
    assert set(wrappers_a) & set(wrappers_b)
    # Short prompts have no wrapper: their ends are the whole prompt.
    assert template_features("explain sourdough step by step")[1] == ()


def test_swarm_sharing_only_a_wrapper_links_as_a_campaign():
    rnd = random.Random(4)
    events = population(rnd, users=30)
    questions = [f"{a} {b} {c}" for a in ("why does my", "how can the", "what if a")
                 for b in TOPICS for c in ("fail at night under load", "cost twice as much",
                                           "behave differently in winter")]
    for m in range(10):
        ts = T0 + rnd.uniform(0, 60)
        for i in range(25):
            ts += rnd.uniform(50, 70)
            events.append(event(
                f"swarm{m}", ts, f"user: Answer thoroughly, showing your reasoning:\n"
                f"{rnd.choice(questions)} and what should one do about it",
                out=900, inp=50, addr=f"192.0.{rnd.randint(0, 255)}.{rnd.randint(1, 250)}",
                ua=rnd.choice(["python-requests/2.31", "Mozilla/5.0"]), latency_ms=6000, i=i))
    pipeline = run(events)
    top = pipeline.campaigns()[0]
    assert {f"swarm{m}" for m in range(10)} <= set(top.members)
    assert not any(a.startswith("user") for a in top.members)
    assert any(e.kind == "shared_template" for e in top.evidence)


def test_baselines_count_light_accounts_and_observed_rpm():
    rnd = random.Random(6)
    events = population(rnd, users=12)  # 25-60 requests each
    events += [event(f"light{u}", T0 + 100 * u + i, "user: hi there", i=i)
               for u in range(30) for i in range(3)]
    pipeline = run(events)
    # 30 light accounts of 3 requests outnumber the 12 busy ones in the median.
    assert pipeline.baselines()["request_rate"].accounts == 42
    assert pipeline.baselines()["request_rate"].median == pytest.approx(3.0)
    assert pipeline.observed_rpm("light0") == pytest.approx(3 * 60 / 600)  # 10 min floor
    assert pipeline.observed_rpm("nobody") is None


def test_a_slow_signup_burst_counts_as_one_burst_on_a_quiet_service():
    from distillguard.detection.campaigns import BURST_GAP_MAX_S, BURST_GAP_S, burst_gap

    day = 86400.0
    quiet = [i * day for i in range(50)]  # one sign-up a day
    swarm = [10.5 * day + 80.0 * i for i in range(12)]  # a key every 80 s
    assert burst_gap(sorted(quiet + swarm)) == BURST_GAP_MAX_S
    busy = [i * 30.0 for i in range(5000)]  # a sign-up every 30 s
    assert burst_gap(busy) == BURST_GAP_S


def test_a_user_who_shares_only_a_question_with_a_swarm_is_not_in_its_core():
    """Campaign risk (and campaign rules) reach only members tied by two kinds of
    evidence: a benign user whose one prompt a swarm also sends is a member by a single
    template bucket, and stays out of the core."""
    from distillguard.detection.campaigns import Campaign

    fields = Campaign.__dataclass_fields__
    assert "core" in fields
    from distillguard.simulate.replay import ReplayRun
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.scenario import load_scenario

    run = ReplayRun(Traffic.generate(load_scenario("calib-swarm"), 0.5), progress=False)
    try:
        rec = run.run()
        campaigns = run.pipeline.refresh()
    finally:
        run.close()
    swarm = next(c for c in campaigns if any(m.startswith("sybil") for m in c.members))
    assert all(m.startswith("sybil") for m in swarm.core)
    assert len(swarm.core) >= 5
    benign = [a for n, a in rec.acct.items() if not n.startswith("sybil")]
    assert all(a.first_action is None for a in benign)


def test_memoised_params_key_tells_apart_values_that_compare_equal():
    from distillguard.detection.pipeline import _params_key, _params_key_cached

    for params in ({"temperature": 1}, {"temperature": 1.0}, {"temperature": True},
                   {"max_tokens": 64, "stop": ["\n"]}, {"user": "u1", "temperature": 0.7},
                   {"temperature": 0.7, "user": "u2", "stream": True}):
        assert _params_key_cached(params) == _params_key(params)
    assert len({_params_key_cached({"temperature": v}) for v in (1, 1.0, True)}) == 3


def test_the_cue_judge_runs_once_where_the_event_was_built():
    from distillguard.detection.features import flat_features

    pipeline = DetectionPipeline(embedder=CachedEmbedder(FakeEmbedder()),
                                 topic_map=np.eye(16, dtype=np.float32))
    prompt = "user: Think step by step and show your full reasoning: why is the sky blue?"
    e = event("a", T0, prompt)
    e.features = flat_features(prompt, {})
    assert e.features["elicit"] and pipeline._features(e).elicits
    # Features from before the gateway judged cues: detection judges the text itself.
    old = event("b", T0, prompt)
    old.features = {k: v for k, v in flat_features(prompt, {}).items() if k != "elicit"}
    assert pipeline._features(old).elicits
    plain = event("c", T0, "user: when to plant gardening tomatoes?")
    plain.features = flat_features(plain.prompt, {})
    assert not pipeline._features(plain).elicits
