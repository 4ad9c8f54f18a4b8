"""asn_table: an offline address -> AS table adds "one provider" evidence to campaigns."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from distillguard.config import Settings
from distillguard.detection.asn import AsnTableError, load_asn_table, parse
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.telemetry.events import RequestEvent

T0 = 1_700_000_000.0
TABLE = (
    "0.0.0.0\t0.255.255.255\t0\tNone\tNot routed\n"
    "192.0.0.0\t192.0.255.255\t64500\tZZ\tExample Net\n"
    "198.51.0.0\t198.51.255.255\t64501\tZZ\tBig Residential ISP\n"
    "2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64502\tZZ\tExample Six\n"
)


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "ip2asn-combined.tsv"
    path.write_text(TABLE)
    return str(path)


def test_lookup_reads_both_families_and_skips_unrouted_space(table):
    t = load_asn_table(table)
    assert str(t.lookup("192.0.7.9")) == "AS64500 (Example Net)"
    assert t.lookup("192.0.7.0/24").number == 64500
    assert t.lookup("2001:db8:5::/48").number == 64502
    assert t.lookup("0.1.2.3") is None  # AS 0: "Not routed"
    assert t.lookup("10.0.0.1") is None
    assert t.lookup("invalid") is None
    assert load_asn_table(table) is t  # read once per process


def test_integer_ranges_of_the_u32_file():
    t = parse("v4-u32.tsv", "16777216\t16777471\t13335\tUS\tCLOUDFLARENET\n")
    assert str(t.lookup("1.0.0.200")) == "AS13335 (CLOUDFLARENET)"


@pytest.mark.parametrize(("text", "words"), [
    ("1.0.0.0\t1.0.0.255\n", "expected range_start"),
    ("1.0.0.0\tnot-an-ip\t13335\tUS\tX\n", "not-an-ip"),
    ("1.0.0.0\t1.0.0.255\tAS-X\tUS\tX\n", "AS number 'AS-X' is not a number"),
    ("1.0.1.0\t1.0.0.255\t13335\tUS\tX\n", "range starts after it ends"),
    ("1.0.0.0\t2001:db8::\t13335\tUS\tX\n", "not of one address family"),
])
def test_a_bad_line_is_named(text, words):
    with pytest.raises(AsnTableError) as info:
        parse("t.tsv", "# comment\n\n" + text)
    assert str(info.value).startswith("asn_table t.tsv, line 3: ")
    assert words in str(info.value)


def test_overlapping_ranges_are_refused():
    with pytest.raises(AsnTableError, match=r"line 2: range overlaps the one on line 1"):
        parse("t.tsv", "1.0.0.0\t1.0.0.255\t1\tUS\tA\n1.0.0.128\t1.0.1.255\t2\tUS\tB\n")


def _event(account, ts, prompt, addr, ua, i):
    return RequestEvent(ts=ts, request_id=f"{account}-{i}", endpoint="/v1/chat/completions",
                        status=200, latency_ms=4000, account=account, client_addr=addr,
                        user_agent=ua, params={"max_tokens": 2048}, prompt=prompt,
                        prompt_tokens=50, completion_tokens=900)


def _traffic(addr_of) -> list[RequestEvent]:
    """Thirty people on one big ISP, and a swarm of four that repeats one template, each
    member from its own prefix, with its own user agent, at its own hours."""
    rnd = random.Random(7)
    events = []
    for u in range(30):
        ts = T0 + rnd.uniform(0, 3600)
        for i in range(rnd.randint(25, 40)):
            ts += rnd.expovariate(1 / 120)
            words = " ".join(rnd.choice(["why", "how", "my", "the", "cat", "tax", "bread",
                                         "pods", "verbs", "again"]) for _ in range(8))
            events.append(_event(f"user{u}", ts, f"user: {words}?",
                                 f"198.51.{rnd.randint(0, 200)}.{rnd.randint(1, 250)}",
                                 "Mozilla/5.0", i))
    for m in range(4):
        ts = T0 + m * 7200.0  # no shared minutes: timing does not tie them
        for i in range(40):
            ts += rnd.uniform(50, 70)
            events.append(_event(
                f"swarm{m}", ts, f"user: You are a tutor. Explain step by step, with all "
                f"reasoning: question number {rnd.randint(1, 99999)} on topic {i % 9}",
                addr_of(m, rnd), f"python-requests/2.{m}", i))
    return sorted(events, key=lambda e: e.ts)


def _swarm_campaign(settings, addr_of):
    pipeline = DetectionPipeline(settings)
    pipeline.observe_many(_traffic(addr_of))
    campaigns = pipeline.refresh()
    top = next(c for c in campaigns if "swarm0" in c.members)
    assert set(top.members) == {f"swarm{m}" for m in range(4)}
    return top


_SWARM_ADDRESSES = {
    "ipv4": lambda m, rnd: f"192.0.{10 * m + 3}.{rnd.randint(1, 250)}",
    "ipv6": lambda m, rnd: f"2001:db8:{m + 1:x}::{rnd.randint(1, 999):x}",
}


@pytest.mark.parametrize("addr_of", list(_SWARM_ADDRESSES.values()),
                         ids=list(_SWARM_ADDRESSES))
def test_a_swarm_rotating_prefixes_in_one_as_shows_it_and_is_acted_on(table, addr_of):
    without = _swarm_campaign(Settings.load(env={}), addr_of)
    assert not any(e.kind == "shared_asn" for e in without.evidence)
    assert without.core == []  # one kind of evidence each (the template): not enough

    top = _swarm_campaign(Settings.load(env={}, asn_table=table), addr_of)
    asn = [e for e in top.evidence if e.kind == "shared_asn"]
    assert len(asn) == 1
    name = "AS64500 (Example Net)" if "." in addr_of(0, random.Random(0)) else \
        "AS64502 (Example Six)"
    assert f"4 of 4 accounts send from {name} across 4 different address prefixes" \
        in asn[0].message
    # Weaker than one shared /24 with one agent (0.5 for all members).
    assert 0 < asn[0].strength < 0.5
    assert top.link > without.link
    assert top.core == top.members  # template + provider: two kinds each


def test_one_big_isp_shared_by_most_accounts_is_no_evidence(table):
    """The thirty people share AS64501 with each other: no campaign of theirs forms, and
    a swarm inside that ISP gets no AS evidence from it."""
    settings = Settings.load(env={}, asn_table=table)
    top = _swarm_campaign(settings, lambda m, rnd: f"198.51.{m}.{rnd.randint(1, 250)}")
    assert not any(e.kind == "shared_asn" for e in top.evidence)


@pytest.mark.parametrize("command", [["serve", "--backend", "echo", "--port", "1"],
                                     ["detect", "--duration", "0"]])
def test_a_malformed_table_stops_the_start_naming_file_and_line(tmp_path, command):
    bad = tmp_path / "asn.tsv"
    bad.write_text("1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n"
                   "1.0.1.0\t1.0.3.255\tAS??\tCN\tCHINANET\n")
    env = {"DISTILLGUARD_ASN_TABLE": str(bad), "DISTILLGUARD_DETECTION_EMBEDDINGS": "0",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "distillguard.cli", "--data-dir",
                           str(tmp_path / "data"), *command], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"distillguard: asn_table {bad}, line 2: AS number 'AS??' is "
                           f"not a number\n")


def test_the_console_graph_draws_the_shared_as_as_a_hub(table):
    from types import SimpleNamespace

    from distillguard.console.graph import campaign_graph

    addr_of = _SWARM_ADDRESSES["ipv4"]
    for settings, drawn in ((Settings.load(env={}, asn_table=table), True),
                            (Settings.load(env={}), False)):
        pipeline = DetectionPipeline(settings)
        pipeline.observe_many(_traffic(addr_of))
        top = next(c for c in pipeline.refresh() if "swarm0" in c.members)
        gateway = SimpleNamespace(detection=pipeline,
                                  store=SimpleNamespace(list_keys=lambda account: []))
        view = {"members": top.members, "member_actions": [], "core": top.core}
        svg = str(campaign_graph(gateway, view))
        assert ("AS64500 (Example Net) (4 accounts)" in svg) is drawn
