"""Issue 13: structured prompt features, refusals that do not lift throttles, pooled
campaigns that get refused, priors, calibrated rules, and an evaluation whose splits
never meet."""

from __future__ import annotations

import random

from distillguard.clock import ManualClock
from distillguard.detection.calibration import threshold
from distillguard.detection.features import hamming, request_features
from distillguard.detection.pipeline import DetectionPipeline, Distinct
from distillguard.detection.snapshot import take_snapshot
from distillguard.policy.engine import PolicyEngine
from distillguard.policy.rules import DEFAULT_RULES
from distillguard.simulate.heldout import FAKE_TURNS
from distillguard.simulate.replay import MemoryActionStore
from distillguard.telemetry.events import RequestEvent

T0 = 1_700_000_000.0
BLOCK = next(r for r in DEFAULT_RULES if r.name == "block-harvester").min_risk


def chat(account: str, ts: float, messages: list[dict], *, out: int = 1200,
         status: int = 200, params: dict | None = None, addr: str = "198.51.100.7",
         ua: str = "python-httpx/0.27", i: int = 0) -> RequestEvent:
    params = params or {"max_tokens": 4096, "temperature": 0.7}
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return RequestEvent(ts=ts, request_id=f"{account}-{i}-{ts}", endpoint="/v1/chat/completions",
                        status=status, latency_ms=3000.0, account=account, client_addr=addr,
                        user_agent=ua, params=params, prompt=prompt if status == 200 else None,
                        prompt_tokens=30 if status == 200 else 0,
                        completion_tokens=out if status == 200 else 0,
                        features=request_features(messages, None, params) if status == 200
                        else None)


def harvest_messages(i: int, suffix: str = "") -> list[dict]:
    return [{"role": "user", "content": f"Think step by step and show your reasoning: how "
                                        f"many ways to tile a {i} by {i + 3} board?{suffix}"}]


def test_features_come_from_the_message_list_not_the_flattened_text():
    plain = request_features(harvest_messages(5), None, {})
    faked = request_features(harvest_messages(5, FAKE_TURNS), None, {})
    # Fake turns inside one user message are still one user message with no history.
    assert faked["roles"] == {"user": 1} and faked["turns"] == 0
    assert faked["elicit"] and plain["elicit"]
    real = request_features([{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "and now?"}], None,
                            {"n": 3, "logprobs": True, "top_logprobs": 2,
                             "tools": [{"type": "function"}]})
    assert real["turns"] == 1 and real["n"] == 3 and real["logprobs"] == 3
    assert real["tools"] == 1
    # The span names the last user message inside the stored flattened prompt.
    flat = "user: hi\nassistant: hello\nuser: and now?"
    start, end = real["span"]
    assert flat[start:end] == "and now?"
    # Near-duplicates are near in SimHash; different prompts are not.
    a = request_features([{"role": "user", "content": "explain the tax rules for a small "
                                                      "bakery in france this year"}], None, {})
    b = request_features([{"role": "user", "content": "explain the tax rules for a small "
                                                      "bakery in spain this year"}], None, {})
    assert hamming(a["sim"], b["sim"]) < hamming(a["sim"], plain["sim"])


def test_fake_turn_suffix_does_not_lower_a_harvesters_risk():
    def risk(suffix: str) -> float:
        p = DetectionPipeline()
        for i in range(120):
            p.observe(chat("h", T0 + 2 * i, harvest_messages(i, suffix), i=i))
        p.refresh()
        return p.account_risk("h").risk

    assert risk(FAKE_TURNS) >= risk("") - 0.01


def test_refused_requests_do_not_lift_a_throttle():
    p = DetectionPipeline()
    for i in range(60):
        p.observe(chat("h", T0 + 2 * i, harvest_messages(i), i=i))
    p.refresh()
    before = p.account_risk("h")
    for i in range(300):  # the harvester keeps knocking while refused
        p.observe(chat("h", T0 + 200 + i, harvest_messages(i), status=429, i=1000 + i))
    p.refresh()
    after = p.account_risk("h")
    assert after.risk >= before.risk - 1e-6
    assert after.refused == 300 and after.events == 60
    shares = {r.signal: r.value for r in after.reasons}
    assert shares["elicitation"] == 1.0


async def test_retained_prompts_off_keeps_the_features(harness_factory):
    harness = await harness_factory(retain_prompts=False)
    await harness.sdk().chat.completions.create(model="echo",
                                                messages=harvest_messages(3, FAKE_TURNS))
    [event] = harness.events()
    assert event.prompt is None
    assert event.features["elicit"] and event.features["turns"] == 0
    assert "span" in event.features and isinstance(event.features["h"], int)


def test_distinct_sees_a_rerun_benchmark_as_repeated():
    d = Distinct()
    first = sum(d.observe(random.Random(k).getrandbits(64)) for k in range(2000))
    again = sum(d.observe(random.Random(k).getrandbits(64)) for k in range(2000))
    assert first > 1900 and again < 200
    assert len(d.seen) <= 257  # bounded


def test_small_population_uses_shipped_priors_and_says_so():
    p = DetectionPipeline()
    for i in range(40):
        p.observe(chat("h", T0 + 2 * i, harvest_messages(i), i=i))
    p.refresh()
    reason = next(r for r in p.account_risk("h").reasons if r.signal == "elicitation")
    assert "prior from real ShareGPT" in reason.message
    assert p.baselines()["elicitation"].source == "prior"


def swarm(n: int, per: int, *, signup=None) -> tuple[DetectionPipeline, list[str]]:
    class Keys:
        def list_keys(self, account=None):
            from distillguard.telemetry.keys import KeyRecord

            return [KeyRecord(f"k{a}", a, "sk", T0 - 3600 + j * 5)
                    for j, a in enumerate(names)]

    names = [f"s{m:02d}" for m in range(n)]
    p = DetectionPipeline(store=Keys(), signup_evidence=signup)
    rnd = random.Random(3)
    events = []
    for m, name in enumerate(names):
        t = T0 + rnd.uniform(0, 30)
        for i in range(per):
            t += rnd.uniform(20, 40)
            q = f"You are an expert tutor. Reason step by step.\n\nQuestion: {rnd.random()}"
            events.append(chat(name, t, [{"role": "user", "content": q}],
                               addr=f"{rnd.randint(1, 200)}.{rnd.randint(0, 255)}.1.1",
                               ua="python-requests/2.31", out=700, i=m * 1000 + i))
    for e in sorted(events, key=lambda e: e.ts):
        p.observe(e)
    # Light, unrelated users so that buckets shared by everyone mean nothing.
    for u in range(40):
        p.observe(chat(f"u{u}", T0 + u, [{"role": "user", "content": f"hello {u}"}], out=50,
                       params={"temperature": 1.0}, ua="Mozilla/5.0", addr=f"9.9.{u}.1"))
    return p, names


def test_a_fully_found_swarm_is_refused_as_one_campaign():
    p, names = swarm(40, 12)
    [campaign] = [c for c in p.refresh() if set(names) <= set(c.members)]
    assert campaign.risk >= next(r for r in DEFAULT_RULES if r.scope == "campaign").min_risk
    clock = ManualClock(T0 + 2000)
    engine = PolicyEngine(MemoryActionStore(clock), clock=clock)
    engine.evaluate(take_snapshot(p, clock()))
    blocked = {n for n in names if (a := engine.current_action(n)) and a.kind == "block"}
    assert blocked == set(names)
    assert not any(engine.current_action(f"u{u}") for u in range(40))


def test_signup_evidence_links_accounts_made_together():
    records = [{"account": f"s{m:02d}", "domain": "mailinator.example",
                "prefix": "203.0.113.0/24", "fingerprint": "fp1", "ts": T0} for m in range(6)]
    p, names = swarm(6, 8, signup=lambda: records)
    campaigns = p.refresh()
    c = next(c for c in campaigns if set(names) <= set(c.members))
    assert any(e.kind == "shared_signup" for e in c.evidence)


def test_threshold_sits_above_benign_scores_for_the_stated_rate():
    scores = [i / 1000 for i in range(1000)]
    assert threshold(scores, 0.01, margin=0.0) == 0.989  # 10 of 1000 may reach it
    assert threshold([0.1, 0.2, 0.3], 0.001) == 0.33  # too few: above the highest


def test_calibrated_rules_say_how_they_were_set():
    rule = next(r for r in DEFAULT_RULES if r.name == "block-harvester")
    assert rule.action == "block" and "calibration split" in (rule.note or "")


def test_splits_never_meet():
    from distillguard.simulate.splits import CORPUS, build

    cal, test, fresh, fresh2 = (build(s) for s in ("calibration", "test", "fresh",
                                                      "fresh2"))
    kinds = [{t[0] for t in s.tables} for s in (cal, test, fresh, fresh2)]
    assert not kinds[0] & kinds[1]
    assert not kinds[2] & (kinds[0] | kinds[1]) and not kinds[3] & (kinds[0] | kinds[1]
                                                                      | kinds[2])
    (a0, an), (b0, _) = CORPUS["calibration"], CORPUS["test"]
    assert a0 + an <= b0 and not cal.held_out
    assert test.held_out and fresh.held_out and fresh2.held_out
    # The fresh splits' strategies are new; their conversations are the test split's.
    assert CORPUS["fresh"] == CORPUS["fresh2"] == CORPUS["test"]


def test_adaptive_search_space_stays_in_bounds():
    from distillguard.simulate.adaptive import mutate, sample

    rng = random.Random(0)
    p = sample(rng)
    for _ in range(200):
        p = mutate(rng, p)
        assert 0.05 <= p["per_account_rpm"] <= 20 and 0 <= p["cover_share"] <= 0.95


def test_adaptive_search_can_buy_aged_accounts_and_is_unchanged_without():
    from distillguard.simulate.adaptive import AGES, sample
    from distillguard.simulate.populations import DAY
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.splits import build

    plain, aged = sample(random.Random(7)), sample(random.Random(7), aged=True)
    # Without ``aged`` a seed draws what it always drew: the old searches still repeat.
    assert "aged_days" not in plain and {**plain, "aged_days": aged["aged_days"]} == aged
    assert {sample(random.Random(s), aged=True)["aged_days"] for s in range(40)} == set(AGES)
    point = {**plain, "accounts": 3, "per_account_rpm": 1.0, "target": 10,
             "signup_spread": 60.0, "aged_days": 45.0}
    scenario = build("test", duration=600.0, attackers=False, benign=False,
                     extra=[("t_adaptive", "adaptive", point)])
    traffic = Traffic.generate(scenario)
    made = [a.key_created_at for a in traffic.accounts if a.label == "attack"]
    assert len(made) == 3
    assert all(45 * DAY - 60 <= scenario.start - t <= 45 * DAY for t in made)


def test_priors_and_reference_share_no_conversation_with_the_evaluation():
    import json
    import re
    from importlib import resources

    from distillguard.simulate.corpus import end_index
    from distillguard.simulate.splits import CORPUS

    first_unused = end_index(max(start + n for start, n in CORPUS.values()))
    text = (resources.files("distillguard.detection") / "priors.json").read_text()
    start, end = map(int, re.search(r"records (\d+)\.\.(\d+)", json.loads(text)["source"])
                     .groups())
    assert first_unused <= start < end
    # The prompt-distribution reference is built from file index 16,000 on.
    assert end <= 16000


def test_the_adaptive_run_acts_at_the_interval_it_is_given():
    from distillguard.simulate.adaptive import evaluate

    # The gateway's detection job runs every 10 s by default (``detection_interval``);
    # the evaluation used to run a round a minute only. A plain reasoning harvester is
    # refused at the first round after it shows, so a shorter interval serves it less.
    point = {"accounts": 1, "per_account_rpm": 20.0, "cover_share": 0.0,
             "elicit_share": 1.0, "template": True, "human_timing": False, "rotate": False,
             "pivot": False, "signup_spread": 60.0, "max_tokens": 4096, "greedy": False,
             "pad": 0}
    slow, fast = (evaluate(point, duration=900.0, seed=0, background=[], interval=i)
                  for i in (60.0, 10.0))
    assert slow.accounts_acted == fast.accounts_acted == 1
    assert fast.haul_responses < slow.haul_responses
