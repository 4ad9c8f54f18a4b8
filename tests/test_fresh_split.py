"""The fresh split's populations (``simulate/fresh.py``): its tables build into a scenario,
generate traffic deterministically, and keep their ground truth straight. No detection
runs here: the split is meant to stay unseen by detection until it is reported on."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import distillguard.simulate.fresh as fresh  # registers the f_ kinds
from distillguard.config import Settings
from distillguard.gateway import schema
from distillguard.simulate.populations import (
    DAY,
    POPULATIONS,
    Model,
    World,
    create_population,
)
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import DEFAULT_START, Scenario

KINDS = sorted({kind for kind, _, _ in fresh.PEOPLE + fresh.ATTACKS})


def scenario(hours: float, seed: int = 31,
             items: list[tuple[str, str, dict[str, Any]]] | None = None) -> Scenario:
    """The split as ``splits.build`` would make it: the test split's corpus slice."""
    duration = hours * 3600
    items = fresh.PEOPLE + fresh.ATTACKS if items is None else items
    return Scenario(
        name="fresh-split", description="the fresh split", source="split:fresh",
        duration=duration, start=DEFAULT_START, seed=seed, detection_interval=60.0,
        held_out=True,
        models=[Model("sim-model", DEFAULT_START),
                Model("sim-model-2", DEFAULT_START + duration / 2)],
        settings={}, policy=None,
        tables=[(kind, name, params, f"split:{name}") for kind, name, params in items],
        corpus=4000, corpus_offset=4000)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return Traffic.generate(scenario(12))


def test_tables_name_registered_kinds_with_the_right_labels():
    names = [name for _, name, _ in fresh.PEOPLE + fresh.ATTACKS]
    assert len(names) == len(set(names))
    assert all(kind.startswith("f_") and kind in POPULATIONS for kind in KINDS)
    assert {POPULATIONS.get(kind).label for kind, _, _ in fresh.PEOPLE} <= {"benign", "heavy"}
    assert {POPULATIONS.get(kind).label for kind, _, _ in fresh.ATTACKS} == {"attack"}
    # Every kind the module registers is used by the split.
    assert {k for k in POPULATIONS.names() if k.startswith("f_")} == set(KINDS)
    assert 6 <= len(fresh.ATTACKS) <= 8


def test_every_table_sends_traffic_within_the_world(traffic: Traffic):
    w = traffic.world
    models = {m.name for m in w.models}
    sizes = Counter(a.group for a in traffic.accounts)
    benign = sum(sizes[p.name] for p in traffic.populations if p.label != "attack")
    assert 100 <= benign <= 150
    sent = Counter(r.group for r in traffic.requests)
    for pop in traffic.populations:
        assert sent[pop.name] > 0, pop.name
    assert all(w.start <= r.ts < w.end for r in traffic.requests)
    assert all(r.messages and r.messages[-1][0] == "user" and r.model in models
               for r in traffic.requests)
    assert [r.ts for r in traffic.requests] == sorted(r.ts for r in traffic.requests)


def test_ground_truth_campaigns_own_their_requests_and_people_are_benign(traffic: Traffic):
    specs = {a.name: a for a in traffic.accounts}
    assert len(specs) == len(traffic.accounts)  # account names are unique
    by_group: dict[str, set[str]] = {}
    for r in traffic.requests:
        by_group.setdefault(r.group, set()).add(r.account)
        assert specs[r.account].group == r.group
        # Nobody sends before their key exists.
        assert specs[r.account].key_created_at <= r.ts
    for pop in traffic.populations:
        mine = [a for a in traffic.accounts if a.group == pop.name]
        assert by_group[pop.name] <= {a.name for a in mine}
        if pop.label == "attack":
            assert pop.target is not None
            assert all(a.label == "attack" and a.campaign == pop.name for a in mine)
            sent = sum(r.group == pop.name for r in traffic.requests)
            assert 0 < sent <= pop.target
        else:
            assert pop.target is None
            assert all(a.label == pop.label in ("benign", "heavy") and a.campaign is None
                       for a in mine)
    assert traffic.targets() == {p.name: p.target for p in traffic.populations
                                 if p.label == "attack"}


def test_generation_is_deterministic_for_a_seed():
    def fingerprint(t: Traffic) -> list[tuple[Any, ...]]:
        return [(r.ts, r.account, r.messages, sorted(r.params.items()), r.model, r.addr,
                 r.agent) for r in t.requests]

    one, two = Traffic.generate(scenario(3)), Traffic.generate(scenario(3))
    assert fingerprint(one) == fingerprint(two)
    assert one.accounts == two.accounts
    other = Traffic.generate(scenario(3, seed=32))
    assert fingerprint(other) != fingerprint(one)


def test_every_request_is_one_the_gateway_accepts(traffic: Traffic):
    # An attacker who read the code sends no field the gateway refuses (tools, logprobs),
    # and neither do these apps: every body parses within the default limits.
    settings = Settings.load(env={})
    limits = schema.Limits(settings.max_tokens_limit, settings.default_max_tokens,
                           settings.max_n)
    for r in traffic.requests:
        body = r.body()
        schema.check_fields(body, "chat")
        gen = schema.parse_chat(body, limits)
        assert gen.max_tokens * int(body.get("n") or 1) <= settings.max_request_tokens


def test_every_kind_builds_with_its_defaults_and_keeps_to_its_target():
    # What the registry-wide simulator test checks for every kind, over a day.
    start = 1_750_000_000.0
    world = World(start, DAY, 7, [Model("m1", start), Model("m2", start + DAY / 2)], 4000,
                  4000)
    for kind in KINDS:
        pop = create_population(kind, kind, {}, world, kind)
        accounts = {a.name: a for a in pop.accounts()}
        reqs = [r for r in pop.requests() if world.start <= r.ts < world.end]
        assert reqs, kind
        assert {r.account for r in reqs} <= set(accounts), kind
        if pop.label == "attack":
            assert pop.target is not None and len(reqs) <= pop.target, kind
            assert all(a.campaign == kind for a in accounts.values())


def test_sign_ups_and_key_ages_are_what_each_table_says(traffic: Traffic):
    w = traffic.world

    def made(group: str) -> list[float]:
        return sorted(a.key_created_at for a in traffic.accounts if a.group == group)

    # Spread sign-ups: days apart, not one burst.
    assert made("staggered-fleet")[-1] - made("staggered-fleet")[0] > 5 * DAY
    assert made("lang-launder")[-1] - made("lang-launder")[0] > DAY
    # The researcher and the launching startup are new customers (under 30 days).
    assert w.start - made("new-researcher")[0] < 3 * DAY
    assert w.start - made("launch-day")[0] < 30 * DAY
    # The slow boil chats (multi-turn, no max_tokens) before its harvest begins.
    boil = next(p for p in traffic.populations if p.name == "slow-boil")
    assert isinstance(boil, fresh.SlowBoil)
    before = [r for r in traffic.requests
              if r.group == "slow-boil" and r.ts < boil.harvest_start]
    assert before and all("max_tokens" not in r.params for r in before)
