"""Detection against an operator who is most of the population: baselines that its own
accounts cannot make lenient, template links counted against every account with a key,
and no greedy allowance for linked accounts splitting a harvest."""

from __future__ import annotations

import random

from distillguard.detection.builtin import GREEDY_ALLOWANCE_TOKENS, TraceHaulSignal
from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.signals import Baseline, capped
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keys import KeyRecord

T0 = 1_700_000_000.0


def event(account: str, ts: float, text: str, *, i: int, out: int = 600,
          params: dict | None = None, addr: str = "198.51.100.7") -> RequestEvent:
    params = params or {"max_tokens": 1024, "temperature": 0.7}
    messages = [{"role": "user", "content": text}]
    return RequestEvent(ts=ts, request_id=f"{account}-{i}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=900.0, account=account, client_addr=addr,
                        user_agent="python-httpx/0.27", params=params,
                        prompt=f"user: {text}", prompt_tokens=20, completion_tokens=out,
                        features=request_features(messages, None, params))


class Keys:
    """A key store stand-in: ``names`` have keys, created a minute apart."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_keys(self, account=None):
        return [KeyRecord(f"k{a}", a, "sk", T0 - 30 * 86400 + 60 * j)
                for j, a in enumerate(self.names)]


def test_a_live_baseline_is_never_more_lenient_than_real_traffic():
    prior = Baseline(0.0, 0.0125, 554, "prior", 0.125)
    assert capped(Baseline(0.01, 0.1, 30), prior).source == "live"  # stricter: kept
    sybil = capped(Baseline(0.9, 1.0, 24), prior)
    assert (sybil.median, sybil.p90, sybil.source) == (0.0125, 0.125, "live-capped")
    assert capped(Baseline(0.9, 1.0, 24), None).median == 0.9  # no prior: the population


def test_twenty_sybils_of_twenty_four_accounts_do_not_set_the_norm():
    rnd = random.Random(1)
    p = DetectionPipeline()
    names = [f"s{m:02d}" for m in range(20)] + [f"u{m}" for m in range(4)]
    for m, name in enumerate(names):
        for i in range(12):
            q = (f"Think step by step and show your reasoning: case {rnd.random()}"
                 if name.startswith("s") else f"what is a good name for a cat {rnd.random()}")
            p.observe(event(name, T0 + 600 * i + m, q, i=i))
    p.refresh()
    base = p.baselines()["elicitation"]
    # The live median (the sybils' own 100%) would call every sybil normal.
    assert base.source == "live-capped" and base.median < 0.05
    reason = next(r for r in p.account_risk("s00").reasons if r.signal == "elicitation")
    assert "capped at the prior from real ShareGPT traffic" in reason.message


def swarm_pipeline(swarm: int, others_with_keys: int) -> DetectionPipeline:
    """``swarm`` accounts sharing one wrapper, each from its own address and created
    apart, plus 4 light users; ``others_with_keys`` more accounts hold keys but have
    not sent anything yet."""
    names = [f"s{m:02d}" for m in range(swarm)]
    light = [f"u{m}" for m in range(4)]
    idle = [f"idle{m}" for m in range(others_with_keys)]
    rnd = random.Random(2)
    keys = Keys(light + idle + names)
    # Keys spread over a month, so no key-creation burst links the swarm.
    keys.list_keys = lambda account=None: [  # type: ignore[method-assign]
        KeyRecord(f"k{a}", a, "sk", T0 - 30 * 86400 + 86400 * rnd.random() * 29)
        for a in light + idle + names]
    p = DetectionPipeline(store=keys)
    for m, name in enumerate(names):
        for i in range(25):
            q = (f"Question {rnd.randint(1, 10**6)}:\nWhy does {rnd.random()} matter?\n\n"
                 f"Respond with a complete, expert answer.")
            p.observe(event(name, T0 + 120 * i + m, q, i=i, addr=f"203.0.{m}.{i}"))
    words = ("recipe", "poem", "email", "garden", "invoice", "bike", "loan", "trip",
             "essay", "cat", "python", "tax", "movie", "sleep", "resume", "chess")
    for m, name in enumerate(light):
        for i in range(6):
            a, b = rnd.sample(words, 2)
            p.observe(event(name, T0 + 900 * i + m, f"help me with my {a} and the {b}",
                            i=i, out=50, addr=f"192.0.{m + 10}.1"))
    return p


def test_a_template_shared_by_most_active_accounts_still_links_a_swarm():
    # 20 of 24 active accounts share the wrapper, but 124 accounts hold keys: the
    # swarm is a sixth of the population, and its template links it.
    p = swarm_pipeline(20, 100)
    linked = [c for c in p.refresh() if any(e.kind == "shared_template" for e in c.evidence)]
    assert linked and len(linked[0].members) == 20
    # A wrapper that more than half of all accounts send says nothing.
    p = swarm_pipeline(20, 0)
    assert not [c for c in p.refresh()
                if any(e.kind == "shared_template" for e in c.evidence)]


def test_linked_accounts_share_no_greedy_allowance():
    signal = TraceHaulSignal()
    greedy = {"max_tokens": 4096, "temperature": 0}
    states = []
    each = int(GREEDY_ALLOWANCE_TOKENS * 0.6)  # each account under the allowance
    for a in ("g1", "g2"):
        p = DetectionPipeline()
        for i in range(10):
            p.observe(event(a, T0 + 60 * i, f"Think step by step: puzzle {a} {i}", i=i,
                            out=each // 10, params=greedy))
        acct = p._accounts[a]
        states.append(acct.states[[s.name for s in p.signals].index("trace_haul")])
    assert all(signal.value(s) == 0.0 for s in states)  # one harness run each: free
    pooled = signal.value(signal.merge(states))
    # Together they took 1.2 allowances of reasoning traces; linked, all of it counts.
    assert pooled > 0 and signal.strength(pooled, None) > 0.5
