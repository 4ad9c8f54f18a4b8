"""What is taken and how it is sent: the answer's share the prompt did not supply, hauls
that keep counting past one account's worth, rotating address pools, and a linked
group's burst measured as it happens."""

from __future__ import annotations

from distillguard.detection.builtin import (
    CAMPAIGN_HAUL_MIN_SPAN_S,
    HAUL_FLOOR,
    HAUL_MIN_SPAN_S,
    ClientChurnSignal,
    NovelOutputSignal,
)
from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.keys import KeyRecord

T0 = 1_700_000_000.0


def event(account: str, ts: float, text: str, *, i: int, out: int = 600,
          addr: str = "198.51.100.7", ua: str = "python-httpx/0.27",
          params: dict | None = None) -> RequestEvent:
    params = params or {"max_tokens": 1024, "temperature": 0.7}
    messages = [{"role": "user", "content": text}]
    return RequestEvent(ts=ts, request_id=f"{account}-{i}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=900.0, account=account, client_addr=addr,
                        user_agent=ua, params=params, prompt=f"user: {text}",
                        prompt_tokens=max(1, len(text) // 4), completion_tokens=out,
                        features=request_features(messages, None, params))


def reading(p: DetectionPipeline, account: str, name: str) -> float | None:
    return next(r.value for r in p.signals_of(account) if r.signal == name)


def test_an_answer_that_restates_its_context_takes_less_than_one_written_from_nothing():
    p = DetectionPipeline()
    context = "The warranty covers parts and labour for two years from purchase. " * 12
    for i in range(40):
        # A retrieval app: a long context, an answer about as long as the context.
        p.observe(event("rag", T0 + 60 * i, f"Context: {context}\nQuestion {i}: how long?",
                        i=i, out=230))
        # A short question with the same answer length: all of it is the model's own.
        p.observe(event("ask", T0 + 60 * i, f"Explain warranty law, part {i}.", i=i,
                        out=230))
    rag, ask = reading(p, "rag", "novel_output"), reading(p, "ask", "novel_output")
    assert rag is not None and ask is not None
    # The context supplied all of it, but a quarter of any answer counts: padding a
    # question with unrelated text cannot hide the rest.
    assert HAUL_FLOOR * ask * 0.9 < rag < 0.3 * ask


def test_a_haul_keeps_counting_past_what_one_account_takes():
    s = NovelOutputSignal()
    one_account, ten = s.strength(1.5e6, None), s.strength(1.5e7, None)
    # Ten times an account's full day of output is not the same evidence as one.
    assert 0.5 < one_account < ten == 1.0
    assert s.strength(4e4, None) == 0.0


def test_rotating_proxies_or_agents_churn_and_people_do_not():
    sig = ClientChurnSignal()

    def churn(addrs: list[str], agents: list[str] | None = None) -> float | None:
        p = DetectionPipeline(signals=["client_churn"])
        for i, a in enumerate(addrs):
            p.observe(event("x", T0 + 30 * i, f"q {i}", i=i, addr=a,
                            ua=agents[i] if agents else "python-httpx/0.27"))
        return sig.value(p._accounts["x"].states[0])

    pool = [f"{10 + i % 200}.{i % 250}.{(7 * i) % 250}.9" for i in range(120)]
    assert churn(pool) > 0.95 and sig.strength(churn(pool), None) == 1.0
    # One server, a fresh user agent on every request.
    agents = [f"Mozilla/5.0 (X11; Linux) Chrome/{100 + i}.0" for i in range(120)]
    assert churn(["203.0.113.5"] * 120, agents) > 0.95
    # Ten people behind one shared key, each from their own home, many requests each.
    team = [f"81.2.{69 + i % 10}.20" for i in range(120)]
    assert churn(team) < 0.1
    # A person who gets a new address for every session of three requests.
    sessions = [f"90.{i // 3}.{i // 3}.4" for i in range(120)]
    assert churn(sessions) < 0.6 and sig.strength(churn(sessions), None) == 0.0
    # Five requests are enough to tell (a swarm member at a request a minute shows it
    # within minutes, not after ten), too few say nothing.
    assert churn(pool[:5]) >= 0.8
    assert churn(sessions[:5]) < 0.6
    assert churn(pool[:4]) is None


class Keys:
    """Five keys made 30 s apart a day ago, among 40 made over the months before."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_keys(self, account=None):
        older = [KeyRecord(f"ko{j}", f"old{j}", "sk", T0 - (100 - 2 * j) * 86400)
                 for j in range(40)]
        return older + [KeyRecord(f"k{a}", a, "sk", T0 - 86400 + 30.0 * j)
                        for j, a in enumerate(self.names)]


def swarm(rotate: bool) -> DetectionPipeline:
    names = [f"s{m}" for m in range(5)]
    p = DetectionPipeline(store=Keys(names))
    i = 0
    for k in range(20):
        for m, name in enumerate(names):
            addr = (f"{20 + k}.{m * 40 + k}.{k * 3 % 250}.9" if rotate
                    else f"198.51.{m}.7")
            p.observe(event(name, T0 + 20 * k + m, f"Give an expert overview of topic "
                            f"{k * 5 + m}.", i=i, out=900, addr=addr,
                            ua="OpenAI/Python 1.40.0"))
            i += 1
    p.refresh()
    return p


def test_accounts_made_together_that_each_rotate_addresses_are_tied_by_it():
    rotating = swarm(rotate=True).campaigns()
    assert rotating and len(rotating[0].members) == 5
    kinds = {e.kind for e in rotating[0].evidence}
    assert "rotating_clients" in kinds
    msg = next(e.message for e in rotating[0].evidence if e.kind == "rotating_clients")
    assert msg.startswith("5 of 5 accounts")
    steady = swarm(rotate=False).campaigns()
    assert steady and "rotating_clients" not in {e.kind for e in steady[0].evidence}
    assert rotating[0].link > steady[0].link
    # Hiding where each member sends from is intent too: the same traffic scores higher.
    assert rotating[0].groups["intent"] > steady[0].groups["intent"]
    assert rotating[0].harvest > steady[0].harvest


def test_a_new_account_asking_for_reasoning_shows_it_from_its_fifth_request():
    p = DetectionPipeline(signals=["elicitation", "long_completions"])
    for i in range(5):
        p.observe(event("new", T0 + 30 * i, f"Question {i} about tides. Think step by step "
                        "and show your reasoning.", i=i, out=1000))
        if i == 3:
            assert reading(p, "new", "elicitation") is None
    assert reading(p, "new", "elicitation") == 1.0
    assert reading(p, "new", "long_completions") is not None


def test_a_key_burst_whose_members_rotate_agents_is_one_burst():
    """Keys made together are split by the agent each member sends with; a member that
    rotates its agent has none, so the burst's rotating members stay together (before,
    each was bucketed by whichever agent of its list came up most, and nothing tied
    them), and a member of the burst with an agent of its own is not pulled in."""
    names = [f"s{m}" for m in range(6)]
    agents = [f"Mozilla/5.0 (Windows NT 10.0) Chrome/{118 + j}.0" for j in range(9)]
    p = DetectionPipeline(store=Keys(names))
    i = 0
    for k in range(8):
        for m, name in enumerate(names):
            steady = name == "s5"
            q = (f"Draft a polite reply to customer ticket {k * 31} about a late parcel."
                 if steady else f"Tell me about subject {k * 7 + m}.")
            p.observe(event(name, T0 + 60 * k + m, q, i=i, out=600,
                            addr="198.51.100.7" if steady else f"{20 + k}.{m * 40 + k}.3.9",
                            ua="curl/8.5" if steady else agents[(3 * k + 5 * m) % 9]))
            i += 1
    p.refresh()
    camps = p.campaigns()
    assert camps and sorted(camps[0].members) == names[:5]
    burst = next(e.message for e in camps[0].evidence if e.kind == "key_burst")
    assert burst.startswith("5 of 5 accounts had their first key created in one burst")
    # Tied by two kinds each (the burst and their rotation): core, so rules reach them.
    assert sorted(camps[0].core) == names[:5]


def test_a_linked_groups_burst_is_measured_over_a_quarter_hour_not_three():
    assert CAMPAIGN_HAUL_MIN_SPAN_S == 900.0 < HAUL_MIN_SPAN_S
    s = NovelOutputSignal()
    # Two accounts took 100k new tokens each in 10 minutes.
    states = [[T0, T0 + 600.0, 100_000.0, 50, 0.0, 0.0] for _ in range(2)]
    alone = s.value(states[0])
    assert alone is not None and abs(alone - 100_000 / (HAUL_MIN_SPAN_S / 86400)) < 1
    pooled = s.value(s.merge(states))
    assert pooled is not None and abs(pooled - 200_000 / (CAMPAIGN_HAUL_MIN_SPAN_S / 86400)) < 1


def test_the_console_graph_draws_the_rotating_members_as_a_hub():
    from types import SimpleNamespace

    from distillguard.console.graph import campaign_graph

    for rotate in (True, False):
        p = swarm(rotate)
        top = p.campaigns()[0]
        gateway = SimpleNamespace(detection=p, store=p.store)
        view = {"members": top.members, "member_actions": [], "core": top.core}
        svg = str(campaign_graph(gateway, view))
        assert ("rotating proxies / agents (5 accounts)" in svg) is rotate


def test_padding_greedy_prompts_does_not_stretch_the_greedy_allowance():
    from distillguard.detection.builtin import GREEDY_ALLOWANCE_TOKENS

    greedy = {"max_tokens": 2048, "temperature": 0}
    filler = "Unrelated notes about gardening and weather. " * 60  # ~2,700 characters

    def haul(pad: bool) -> float:
        p = DetectionPipeline(signals=["novel_output"])
        # Twice the allowance, served, over new prompts.
        for i in range(2 * GREEDY_ALLOWANCE_TOKENS // 1000):
            text = (f"Context: {filler}\n" if pad else "") + f"Question {i}: explain it."
            p.observe(event("g", T0 + 30 * i, text, i=i, out=1000, params=greedy))
        value = NovelOutputSignal().value(p._accounts["g"].states[0])
        assert value is not None
        return value

    plain, padded = haul(False), haul(True)
    # Half of what was served lies beyond the allowance either way; padding lowers its
    # weight to the floor, no further.
    assert plain > 0 and padded > 0
    assert abs(padded / plain - HAUL_FLOOR) < 0.05


RESTART = """
import sys
from test_detection_extraction import T0, event
from distillguard.detection import checkpoint
from distillguard.detection.pipeline import DetectionPipeline
# A team key: 64 members, each from their own home with their own browser.
clients = [(f"81.{i}.7.20", f"Mozilla/5.0 member-{i}") for i in range(64)]
p = DetectionPipeline(signals=["client_churn"])
start = 0 if sys.argv[1] == "before" else 128
if sys.argv[1] == "after":
    checkpoint.restore(p, open(sys.argv[2], "rb").read())
for i in range(start, start + 128):
    addr, ua = clients[i % 64]
    p.observe(event("team", T0 + 30 * i, f"q {i}", i=i, addr=addr, ua=ua))
if sys.argv[1] == "before":
    open(sys.argv[2], "wb").write(checkpoint.dump_state(p, 0))
st = p._accounts["team"].states[0]
print(st[0], st[1])
"""


def test_remembered_clients_are_still_known_after_a_restart(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "restart.py"
    script.write_text(RESTART)
    blob = tmp_path / "checkpoint.bin"
    tests = str(Path(__file__).parent)

    def run(phase: str, seed: str) -> tuple[int, int]:
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, str(script), phase, str(blob)], env=env,
                             check=True, capture_output=True, text=True).stdout.split()
        return int(out[0]), int(out[1])

    new_before, _ = run("before", "1")
    # Each member's first request was new (but the account's very first); no repeat was.
    assert new_before == 63
    # Restarted in a process whose hash() is salted differently, the same 64 clients
    # come back: none of them is new.
    new_after, requests = run("after", "2")
    assert (new_after, requests) == (63, 256)
