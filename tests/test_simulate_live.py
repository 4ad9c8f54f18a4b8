"""Live mode through a real gateway agrees with replay on a small scenario."""

from __future__ import annotations

from distillguard.simulate.live import LiveRun
from distillguard.simulate.replay import ReplayRun
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import load_scenario, parse_scenario


def test_live_and_replay_act_on_the_same_accounts():
    scenario = parse_scenario({
        "scenario": {"duration": "2h", "seed": 11, "detection_interval": "5m"},
        "population": [{"kind": "casual", "accounts": 30},
                       {"kind": "rag_app", "per_day": 600}],
        "campaign": [{"strategy": "bulk_harvester", "target": 200, "start": "10m"},
                     {"strategy": "reasoning_trace", "accounts": 4, "target": 200,
                      "start": "10m"}],
    }, "agreement.toml")
    traffic = Traffic.generate(scenario)
    acted, served = {}, {}
    for cls in (ReplayRun, LiveRun):
        run = cls(traffic, progress=False)
        try:
            rec = run.run()
        finally:
            run.close()
        acted[cls.__name__] = {n for n, a in rec.acct.items() if a.first_action is not None}
        served[cls.__name__] = sum(a.served + a.refused for a in rec.acct.values())
    # Every request went through the gateway (SDK, keys, admission) and came back.
    assert served["LiveRun"] == served["ReplayRun"] == len(traffic.requests)
    assert acted["ReplayRun"], "the scenario should make detection act"
    assert acted["LiveRun"] == acted["ReplayRun"]
    assert all(n.startswith(("bulk_harvester", "reasoning_trace")) for n in acted["LiveRun"])


def test_a_swarm_under_the_rate_limit_is_stopped_through_the_gateway():
    # calib-swarm: twelve accounts each under the rate limit, keys made in one burst.
    run = LiveRun(Traffic.generate(load_scenario("calib-swarm")), progress=False)
    try:
        rec = run.run()
    finally:
        run.close()
    swarm = {n: a for n, a in rec.acct.items() if n.startswith("sybil_swarm")}
    benign = {n: a for n, a in rec.acct.items() if not n.startswith("sybil_swarm")}
    assert len(swarm) == 12
    stopped = [a for a in swarm.values() if a.refused > 0]
    assert len(stopped) >= 10, f"only {len(stopped)} of 12 swarm members were refused"
    assert sum(a.served for a in swarm.values()) < 0.5 * 2400
    assert all(a.first_action is None and a.refused == 0 for a in benign.values())
