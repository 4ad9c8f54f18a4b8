"""The fresh2 split (``simulate.fresh2``): its tables build, its traffic is well formed."""

from __future__ import annotations

import functools

import pytest

import distillguard.simulate.fresh2 as fresh2
from distillguard.gateway.schema import Limits, parse_chat
from distillguard.simulate.populations import (
    DAY,
    Model,
    World,
    create_population,
    population_kinds,
)
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import DEFAULT_START, Scenario

# The gateway's defaults: max_tokens_limit, default_max_tokens, max_n, max_request_tokens.
LIMITS = Limits(4096, 256, 4)
MAX_REQUEST_TOKENS = 4096


def scenario(seed: int = 41, duration: float = DAY / 2) -> Scenario:
    """The split as ``splits.build`` would make it: both tables, corpus 4000..8000, a
    newer model half-way."""
    population_kinds()
    start = DEFAULT_START
    items = fresh2.PEOPLE + fresh2.ATTACKS
    return Scenario(
        name="fresh2-split", description="fresh2", source="split:fresh2",
        duration=duration, start=start, seed=seed, detection_interval=60.0, held_out=True,
        models=[Model("sim-model", start), Model("sim-model-2", start + duration / 2)],
        settings={}, policy=None,
        tables=[(kind, name, params, f"split:{name}") for kind, name, params in items],
        corpus=4000, corpus_offset=4000)


@functools.cache
def traffic(seed: int = 41, duration: float = DAY / 2) -> Traffic:
    return Traffic.generate(scenario(seed, duration))


def test_tables_name_registered_kinds_once_with_the_expected_sizes():
    kinds = set(population_kinds())
    names = [name for _, name, _ in fresh2.PEOPLE + fresh2.ATTACKS]
    assert len(names) == len(set(names))
    for kind, _, _ in fresh2.PEOPLE + fresh2.ATTACKS:
        assert kind.startswith("g_") and kind in kinds
    pops = {p.name: p for p in traffic().populations}
    people = [pops[name] for _, name, _ in fresh2.PEOPLE]
    attacks = [pops[name] for _, name, _ in fresh2.ATTACKS]
    assert all(p.label in ("benign", "heavy") for p in people)
    assert all(p.label == "attack" and p.target for p in attacks)
    benign = sum(len(p.accounts()) for p in people)
    heavy = sum(len(p.accounts()) for p in people if p.label == "heavy")
    assert 100 <= benign <= 150 and 6 <= heavy <= 8
    assert 6 <= len(attacks) <= 8


@pytest.mark.parametrize("duration", [DAY / 2, DAY])
def test_every_population_sends_traffic_inside_the_world(duration):
    t = traffic(duration=duration)
    sent = {r.group for r in t.requests}
    assert sent == {p.name for p in t.populations}
    assert all(t.world.start <= r.ts < t.world.end for r in t.requests)
    assert [r.ts for r in t.requests] == sorted(r.ts for r in t.requests)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not():
    a, b = traffic(), Traffic.generate(scenario())
    assert a.accounts == b.accounts and a.requests == b.requests
    c = traffic(seed=42)
    assert [r.messages for r in c.requests[:200]] != [r.messages for r in a.requests[:200]]


def test_labels_accounts_and_targets():
    t = traffic()
    accounts = {a.name: a for a in t.accounts}
    assert len(accounts) == len(t.accounts)
    by_group: dict[str, int] = {}
    for r in t.requests:
        owner = accounts[r.account]  # every request belongs to an account of the world
        assert owner.group == r.group
        by_group[r.group] = by_group.get(r.group, 0) + 1
    for pop in t.populations:
        mine = [a for a in t.accounts if a.group == pop.name]
        assert mine and all(a.label == pop.label and a.kind == pop.kind for a in mine)
        if pop.label == "attack":
            assert all(a.campaign == pop.name for a in mine)
            assert 0 < by_group[pop.name] <= pop.target
        else:
            assert all(a.campaign is None for a in mine)


def test_no_request_before_its_accounts_key_exists():
    for t in (traffic(), traffic(duration=DAY)):
        made = {a.name: a.key_created_at for a in t.accounts}
        assert all(r.ts >= made[r.account] for r in t.requests)


def test_every_body_passes_the_gateways_schema():
    t = traffic()
    models = {m.name for m in t.world.models}
    for r in t.requests:
        gen = parse_chat(r.body(), LIMITS)  # raises InvalidRequest (a 400) if not
        assert gen.n * gen.max_tokens <= MAX_REQUEST_TOKENS
        assert r.model in models and r.messages[-1][0] == "user"


def test_each_kind_builds_from_its_defaults_in_a_week():
    """What the registry-wide simulator test checks, for this split's kinds."""
    start = 1_750_000_000.0
    world = World(start, 7 * DAY, 7, [Model("m1", start), Model("m2", start + DAY)])
    kinds = sorted({kind for kind, _, _ in fresh2.PEOPLE + fresh2.ATTACKS})
    for kind in kinds:
        pop = create_population(kind, kind, {}, world, kind)
        accounts = {a.name: a for a in pop.accounts()}
        reqs = [r for r in pop.requests() if world.start <= r.ts < world.end]
        assert reqs and {r.account for r in reqs} <= set(accounts), kind
        assert all(r.messages[-1][0] == "user" and r.model in ("m1", "m2") for r in reqs)
        if pop.label == "attack":
            assert len(reqs) <= pop.target, kind
            assert all(a.campaign == kind for a in accounts.values())
