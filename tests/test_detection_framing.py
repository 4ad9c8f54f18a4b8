"""Framing: an outsider that copies an honest app's prompt template and client links
itself to the app, and must not lend the app its campaign risk."""

from __future__ import annotations

from distillguard.detection.campaigns import ESTABLISHED_S
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.telemetry.keys import KeyRecord
from test_detection_extraction import T0, event

TEMPLATE = ("Answer the question using only the context below. If the answer is not in "
            "the context, say so.\n\nContext:\n{doc}\n\nQuestion: {q}")
AGENT = "python-requests/2.32.3"
PARAMS = {"temperature": 0.2, "max_tokens": 512}


class Keys:
    def __init__(self, made: dict[str, float]) -> None:
        self.made = made

    def list_keys(self, account=None):
        # Background accounts made over the months before, so no burst is everyone.
        older = [KeyRecord(f"ko{j}", f"old{j}", "sk", T0 - (200 - 3 * j) * 86400)
                 for j in range(40)]
        return older + [KeyRecord(f"k-{a}", a, "sk", t) for a, t in self.made.items()]


def run(apps: dict[str, tuple[float, str]], framers: int = 4,
        net: str = "203.0.113", aged: bool = False) -> DetectionPipeline:
    """``apps``: account -> (key made, address) of honest apps sending the template;
    then ``framers`` new accounts made in one burst a day ago (``aged``: bought, each
    made on its own day 40 to 70 days ago), from the /24 ``net``, sending the same
    template, client and parameters with an empty context and taking long answers."""
    made = {a: t for a, (t, _) in apps.items()}
    made.update({f"framer{j}": T0 - (40 + 10 * j) * 86400 if aged else T0 - 86400 + 20.0 * j
                 for j in range(framers)})
    p = DetectionPipeline(store=Keys(made))
    i = 0
    for k in range(30):
        for a, (_, addr) in apps.items():
            doc = f"Release notes {k}: the export button moved to the file menu. " * 8
            p.observe(event(a, T0 + 60 * k, TEMPLATE.format(doc=doc, q=f"where is {k}?"),
                            i=i, out=120, addr=addr, ua=AGENT, params=PARAMS))
            i += 1
        for j in range(framers):
            q = f"Explain in depth how compilers optimise loops, part {k * framers + j}."
            p.observe(event(f"framer{j}", T0 + 60 * k + 5 + j,
                            TEMPLATE.format(doc="", q=q), i=i, out=500,
                            addr=f"{net}.{10 + j}", ua=AGENT, params=PARAMS))
            i += 1
    p.refresh()
    return p


def the_campaign(p: DetectionPipeline, member: str):
    return next(c for c in p.campaigns() if member in c.members
                and any(m.startswith("framer") for m in c.members))


def test_established_apps_copied_by_a_newcomer_are_linked_but_judged_apart():
    old = T0 - 2 * ESTABLISHED_S
    apps = {"docs-app": (old, "198.51.100.7"), "help-app": (old + 9 * 86400, "192.0.2.40"),
            "wiki-app": (old + 20 * 86400, "100.64.3.9")}
    p = run(apps)
    c = the_campaign(p, "docs-app")
    # The analyst still sees the link ...
    assert set(apps) <= set(c.members) and {"shared_template", "shared_client"} <= {
        e.kind for e in c.evidence}
    # ... but the campaign's risk reaches only the accounts that arrived with it.
    assert sorted(c.apart) == sorted(apps)
    assert set(c.core) == {f"framer{j}" for j in range(4)}
    # The shared prefix is the framers' (an app's own address is shared with no one).
    infra = next(e.message for e in c.evidence if e.kind == "shared_infrastructure")
    assert infra.startswith("4 of 7 accounts") and "203.0.113.0/24" in infra
    for a in apps:
        assert p.account_risk(a).risk == p.account_risk(a).own_risk


def test_newcomers_renting_addresses_beside_an_established_app_do_not_lend_it_their_risk():
    # The framers send from the docs app's own cloud /24 with its client, so a shared
    # address prefix (evidence an outsider cannot copy from elsewhere) ties them to it.
    old = T0 - 2 * ESTABLISHED_S
    apps = {"docs-app": (old, "198.51.100.7"), "help-app": (old + 9 * 86400, "192.0.2.40")}
    p = run(apps, net="198.51.100")
    c = the_campaign(p, "docs-app")
    infra = next(e.message for e in c.evidence if e.kind == "shared_infrastructure")
    assert infra.startswith("5 of 6 accounts") and "198.51.100.0/24" in infra
    assert sorted(c.apart) == sorted(apps)
    assert set(c.core) == {f"framer{j}" for j in range(4)}
    assert c.risk > p.account_risk("docs-app").risk == p.account_risk("docs-app").own_risk


def test_aged_framers_renting_beside_an_established_app_are_not_judged_with_it():
    # The same, with framers as old as the app: one /24 used to join them all into one
    # established part, scored as its own campaign on the framers' harvest.
    old = T0 - 3 * ESTABLISHED_S
    apps = {"docs-app": (old, "198.51.100.7"), "help-app": (old + 9 * 86400, "192.0.2.40")}
    p = run(apps, net="198.51.100", aged=True)
    assert p.account_risk("docs-app").risk == p.account_risk("docs-app").own_risk
    assert not [c for c in p.campaigns() if "docs-app" in c.members and c.risk
                and "docs-app" not in c.apart]


def test_new_accounts_tied_only_by_a_template_still_carry_the_campaign():
    # The same apps with keys made last week, apart from each other: nothing shows they
    # were there first, so they are judged with the group, as a swarm's members are.
    recent = T0 - 7 * 86400
    apps = {"a1": (recent, "198.51.100.7"), "a2": (recent + 3 * 3600, "192.0.2.40"),
            "a3": (recent + 2 * 86400, "100.64.3.9")}
    c = the_campaign(run(apps), "a1")
    assert not c.apart
    assert set(apps) <= set(c.core)


def test_an_established_app_sharded_over_keys_is_judged_as_its_own_group():
    # One app's three keys made together long ago, from one server /24: tied to each
    # other by evidence no outsider can copy (the key burst), to the framers only by
    # the template.
    made = T0 - 3 * ESTABLISHED_S
    shards = {f"shard{j}": (made + 20.0 * j, f"192.0.2.{40 + j}") for j in range(3)}
    p = run(shards)
    c = the_campaign(p, "shard0")
    assert sorted(c.apart) == sorted(shards)
    assert not set(shards) & set(c.core)
    own = [x for x in p.campaigns() if sorted(x.members) == sorted(shards)]
    assert len(own) == 1 and {"key_burst", "shared_infrastructure"} <= {
        e.kind for e in own[0].evidence}
    # Its risk is its own group's, not the framers'.
    assert own[0].risk < c.risk


async def test_the_campaign_page_says_who_is_judged_apart_and_why(harness_factory):
    from distillguard.policy.engine import PolicyEngine
    from test_console import login

    h = await harness_factory()
    old = T0 - 2 * ESTABLISHED_S
    h.runtime.detection = run({"docs-app": (old, "198.51.100.7"),
                               "help-app": (old, "192.0.2.40")})
    if getattr(h.runtime, "policy", None) is None:
        h.runtime.policy = PolicyEngine.from_settings(h.runtime.settings)
    c = the_campaign(h.runtime.detection, "docs-app")
    async with h.http() as client:
        await login(client)
        r = await client.get(f"/console/campaigns/{c.campaign_id}")
    assert r.status_code == 200
    assert "(4 core, 2 judged apart)" in r.text
    assert "Judged apart: 2 established accounts tied to the others only by what an " \
           "outsider can copy" in r.text
    assert r.text.count("<td>judged apart</td>") == 2
