"""Simulator: populations, scenarios, replay enforcement, metrics, CLI, simulation mode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest

from distillguard import cli
from distillguard.detection.driver import ManualDriver, manual_driver
from distillguard.gateway.app import build_app
from distillguard.simulate.live import SIM_TIME_HEADER, ArrivalClock, SimTimeApp
from distillguard.simulate.metrics import roc
from distillguard.simulate.populations import (
    Model,
    ScenarioError,
    World,
    create_population,
    population_kinds,
)
from distillguard.simulate.replay import ReplayRun
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import builtin_names, load_scenario, parse_scenario
from distillguard.simulate.traffic import diurnal_times, topic_of

START = 1_750_000_000.0


def small(**extra):
    data = {"scenario": {"duration": "3h", "seed": 1, "detection_interval": "5m"},
            "population": [{"kind": "casual", "accounts": 40}],
            "campaign": [{"strategy": "bulk_harvester", "target": 400}]}
    data.update(extra)
    return parse_scenario(data, "test.toml")


def test_every_registered_population_builds_and_sends_traffic():
    world = World(START, 7 * 86400, 7, [Model("m1", START), Model("m2", START + 86400)])
    kinds = population_kinds()
    assert {"casual", "eval_harness", "rag_app", "shared_key", "batch_job", "bulk_harvester",
            "sybil_swarm", "slow_drip", "mimic", "reasoning_trace", "topic_sweep",
            "model_release"} <= set(kinds)
    for kind in kinds:
        pop = create_population(kind, kind, {}, world, kind)
        accounts = {a.name: a for a in pop.accounts()}
        reqs = [r for r in pop.requests() if world.start <= r.ts < world.end]
        assert reqs, kind
        assert {r.account for r in reqs} <= set(accounts), kind
        assert all(r.messages[-1][0] == "user" and r.model in ("m1", "m2") for r in reqs)
        assert all(a.label == pop.label for a in accounts.values())
        if pop.label == "attack":
            # model_release's sleepers also chat a little before the shift (not target).
            asked = [r for r in reqs if kind != "model_release" or r.model == "m2"]
            assert pop.target and 0 < len(asked) <= pop.target
            assert all(a.campaign == kind for a in accounts.values())


def test_casual_users_follow_up_keep_a_focus_and_sleep_at_night():
    world = World(START, 7 * 86400, 3, [Model("m", START)])
    pop = create_population("casual", "c", {"accounts": 300, "sdk_share": 0.0}, world, "c")
    reqs = list(pop.requests())
    follow_ups = [r for r in reqs if any(role == "assistant" for role, _ in r.messages)]
    assert len(follow_ups) > 0.2 * len(reqs)
    # Real follow-up turns of the same ShareGPT conversation, mostly new questions.
    assert sum(r.messages[-1][1] != r.messages[0][1] for r in follow_ups) > 0.7 * len(follow_ups)
    addrs, topics = {}, {}
    for r in reqs:
        addrs.setdefault(r.account, set()).add(r.addr)
        if len(r.messages) == 1:
            topics.setdefault(r.account, []).append(topic_of(r.messages[0][1]))
    assert max(len(v) for v in addrs.values()) <= 2  # home and phone
    focused = [max(t.count(x) for x in set(t)) / len(t) for t in topics.values() if len(t) >= 8]
    assert focused and sum(focused) / len(focused) > 0.45  # ~1/8 if topics were uniform
    times = diurnal_times(random.Random(1), START, START + 30 * 86400, 50, 0)
    hours = [int(t // 3600 % 24) for t in times]
    night = sum(h in (1, 2, 3, 4) for h in hours)
    day = sum(h in (10, 11, 12, 13) for h in hours)
    assert night < 0.1 * day


def test_scenario_errors_name_the_problem():
    with pytest.raises(ScenarioError, match="unknown kind|unknown strategy"):
        parse_scenario({"scenario": {"duration": "1h"},
                        "campaign": [{"strategy": "nope"}]}, "s.toml")
    with pytest.raises(ScenarioError, match="unknown field.*rpmm"):
        parse_scenario({"scenario": {"duration": "1h"},
                        "campaign": [{"strategy": "bulk_harvester", "rpmm": 3}]}, "s.toml")
    with pytest.raises(ScenarioError, match="use \\[\\[campaign\\]\\]"):
        parse_scenario({"scenario": {"duration": "1h"},
                        "population": [{"kind": "sybil_swarm"}]}, "s.toml")
    with pytest.raises(ScenarioError, match="duration"):
        parse_scenario({"scenario": {"duration": "soon"},
                        "population": [{"kind": "casual"}]}, "s.toml")
    with pytest.raises(ScenarioError, match="accounts must be int"):
        parse_scenario({"scenario": {"duration": "1h"},
                        "population": [{"kind": "casual", "accounts": "many"}]}, "s.toml")
    with pytest.raises(ScenarioError, match="built-ins"):
        load_scenario("no-such-scenario")


def test_builtin_scenarios_load_and_some_are_held_out():
    names = builtin_names()
    assert {"quickstart", "swarm-week", "mimic", "model-release", "reasoning-sweep"} <= set(names)
    scenarios = [load_scenario(n) for n in names]
    assert any(s.held_out for s in scenarios) and not all(s.held_out for s in scenarios)
    assert all(s.tables and s.duration > 0 for s in scenarios)


def test_user_scenario_file_with_its_own_policy(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text("""
[scenario]
duration = "3h"
detection_interval = "5m"
[[population]]
kind = "casual"
accounts = 30
[[campaign]]
strategy = "bulk_harvester"
target = 400
[policy]
[[policy.rules]]
name = "block-anything-risky"
action = "block"
min_risk = 0.3
""")
    scenario = load_scenario(str(path))
    run = ReplayRun(Traffic.generate(scenario), progress=False)
    try:
        rec = run.run()
    finally:
        run.close()
    h = rec.acct["bulk_harvester-00000"]
    # Blocked: every later request refused with 403, and none of them answered.
    assert h.worst_kind == "block" and h.first_action is not None
    assert h.blocked > 0 and h.served == h.served_before
    assert rec.camp["bulk_harvester"].served < 400


def test_replay_is_deterministic_and_counts_benign_friction():
    scenario = small()
    results = []
    for _ in range(2):
        run = ReplayRun(Traffic.generate(scenario), progress=False)
        try:
            rec = run.run()
        finally:
            run.close()
        results.append(({n: (a.served, a.first_action) for n, a in rec.acct.items()},
                         rec.benign_requests))
    assert results[0] == results[1]
    assert results[0][1] > 0


def test_roc_area_and_points():
    curve = roc([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    assert curve["auc"] == pytest.approx(0.75)
    assert curve["points"][-1] == {"threshold": 0.1, "fpr": 1.0, "tpr": 1.0}
    assert roc([0.5, 0.5], [True, False])["auc"] == pytest.approx(0.5)


@pytest.fixture
def simulate_cli(monkeypatch):
    if "distillguard.simulate.cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES",
                            cli.COMMAND_MODULES + ("distillguard.simulate.cli",))
    return cli.main


def test_cli_writes_metrics_and_report(simulate_cli, tmp_path: Path, capsys):
    path = tmp_path / "s.toml"
    path.write_text("""
[scenario]
name = "tiny"
duration = "2h"
detection_interval = "10m"
[[population]]
kind = "casual"
accounts = 20
[[population]]
kind = "rag_app"
per_day = 500
[[campaign]]
strategy = "sybil_swarm"
accounts = 5
target = 200
""")
    out = tmp_path / "out"
    code = simulate_cli(["--data-dir", str(tmp_path / "d"), "simulate", str(path), "--out",
                         str(out), "--no-embeddings"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["scenario"]["name"] == "tiny" and m["mode"] == "replay"
    assert m["campaigns"]["sybil_swarm"]["accounts"] == 5
    assert set(m["goals"]) >= {"every_campaign_acted", "benign_fpr_at_most_0.1pct", "all_met"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "sybil_swarm" in page
    assert "simulated" in captured.err  # progress on stderr
    assert "campaign recall" in captured.out


def test_cli_rejects_bad_input_without_traceback(simulate_cli, tmp_path: Path, capsys):
    code = simulate_cli(["--data-dir", str(tmp_path), "simulate", "no-such", "--out",
                         str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no built-in scenario" in err and "Traceback" not in err
    assert simulate_cli(["--data-dir", str(tmp_path), "simulate", "--list"]) == 0
    assert "quickstart" in capsys.readouterr().out


async def _post(app, headers, runtime=None):
    gateway = runtime or app.state.runtime
    _, key = gateway.store.create_key("sim-user")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        r = await http.post("/v1/chat/completions", headers={
            "Authorization": f"Bearer {key}", **headers},
            json={"model": "echo", "messages": [{"role": "user", "content": "hi there"}]})
    assert r.status_code == 200
    return gateway


async def test_the_gateway_ignores_the_simulators_time_header(make_settings):
    # Production has no simulation mode: the header the live simulator sends is read only
    # by its own wrapper, so a client sending it to a real gateway changes nothing.
    app = build_app(make_settings())
    async with app.router.lifespan_context(app):
        runtime = await _post(app, {SIM_TIME_HEADER: "1000000000.5"})
        runtime.writer.flush()
        events = list(runtime.store.iter_events())
        assert events and events[-1].ts > 1.7e9


async def test_an_injected_clock_and_manual_driver_time_the_production_path(make_settings):
    clock = ArrivalClock(1_000_000_000.0)
    app = build_app(make_settings(), clock=clock, driver=manual_driver)
    async with app.router.lifespan_context(app):
        runtime = await _post(SimTimeApp(app, clock), {SIM_TIME_HEADER: "1000000000.5"},
                              app.state.runtime)
        runtime.writer.flush()
        [event] = list(runtime.store.iter_events())
        assert event.ts == 1000000000.5
        assert runtime.policy.clock() == 1000000000.5  # the latest arrival
        driver = runtime.driver
        assert isinstance(driver, ManualDriver)
        assert runtime.snapshot.account_risk("sim-user") is None  # no round has run
        driver.round(1)
        assert runtime.snapshot.account_risk("sim-user").events == 1


def test_scale_shrinks_accounts_and_targets():
    scenario = load_scenario("quickstart")
    _, full = scenario.build()
    _, tenth = scenario.build(scale=0.1)
    sizes = {p.name: (len(p.accounts()), p.target) for p in full}
    small_sizes = {p.name: (len(p.accounts()), p.target) for p in tenth}
    assert small_sizes["casual"][0] == sizes["casual"][0] // 10
    assert small_sizes["sybil_swarm"] == (3, sizes["sybil_swarm"][1] // 10)
    assert small_sizes["bulk_harvester"] == (1, sizes["bulk_harvester"][1] // 10)
    assert small_sizes["rag_app"] == sizes["rag_app"]  # a single heavy user stays itself


def test_an_organisations_seats_and_a_sharded_app_link_but_are_not_acted_on():
    # Accounts made together behind one address, one client and one system prompt are
    # what a swarm looks like; these are people and one app, and nothing refuses them.
    data = {"scenario": {"duration": "8h", "seed": 3, "detection_interval": "2m"},
            "population": [{"kind": "casual", "accounts": 30},
                           {"kind": "org_seats", "name": "org", "accounts": 8},
                           {"kind": "rag_app", "name": "app", "accounts": 4,
                            "per_day": 4000.0, "sharded": True}]}
    traffic = Traffic.generate(parse_scenario(data, "org.toml"))
    seats = [a for a in traffic.accounts if a.group == "org"]
    made = sorted(a.key_created_at for a in seats)
    assert made[-1] - made[0] < 8 * 40  # one administrator's sitting
    keys = {r.account for r in traffic.requests if r.group == "app"}
    assert len(keys) == 4  # one app, its traffic spread over every key
    run = ReplayRun(traffic, progress=False)
    try:
        rec = run.run()
        linked = {m for c in run.pipeline.campaigns() for m in c.core}
    finally:
        run.close()
    assert {a.name for a in seats} & linked and keys & linked
    assert not [n for n, a in rec.acct.items() if a.first_action is not None]


def test_a_split_can_be_built_with_more_people_and_nothing_else_changes():
    from distillguard.simulate.splits import build

    def counts(scenario):
        return {name: params.get("accounts") for _, name, params, _ in scenario.tables}

    base, more = counts(build("test")), counts(build("test", people_scale=3))
    assert more["people"] == 3 * base["people"] and more["intl"] == 3 * base["intl"]
    # The attackers and the heavy users (one account each) are as they were.
    assert {k: v for k, v in more.items() if k not in ("people", "students", "intl")} == \
        {k: v for k, v in base.items() if k not in ("people", "students", "intl")}
    with pytest.raises(ValueError, match="people_scale"):
        build("test", people_scale=0)
