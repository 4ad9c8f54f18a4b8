"""Analyst admin routes through a running gateway: ranked risk with reasons, actions that
apply, the audit log, and OpenAI-shaped errors for bad input."""

from __future__ import annotations

import random

import pytest

from conftest import ADMIN_TOKEN
from distillguard.detection.driver import manual_driver
from distillguard.policy.rules import DEFAULT_RULES
from test_detection import harvester, population

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def harness(harness_factory):
    h = await harness_factory(driver=manual_driver)
    # Detection reads the store as its log.
    h.runtime.store.write_events(sorted(population(random.Random(2)) + harvester(),
                                        key=lambda e: e.ts))
    h.runtime.driver.round()
    return h


async def test_accounts_ranked_by_risk_with_reasons(harness):
    async with harness.http(headers=AUTH) as client:
        r = await client.get("/admin/risk", params={"limit": 5})
        assert r.status_code == 200
        top = r.json()["data"][0]
        block = next(r for r in DEFAULT_RULES if r.name == "block-harvester").min_risk
        assert top["account"] == "harvest" and top["risk"] >= block
        assert any("population median" in x["message"] for x in top["reasons"])
        detail = (await client.get("/admin/accounts/harvest")).json()
        signals = {s["signal"]: s for s in detail["signals"]}
        assert signals["elicitation"]["value"] == 1.0
        assert signals["elicitation"]["baseline"]["accounts"] > 10
        # What the new-account allowance reads: 200 answers of 1,500 tokens; no key in
        # the store for this account, so no age.
        assert detail["served_tokens"] == 300_000 and detail["age_s"] is None


async def test_analyst_block_applies_to_the_next_request_and_is_audited(harness):
    key = harness.key("mallory")
    async with harness.http(headers=AUTH) as admin:
        r = await admin.post("/admin/accounts/mallory/actions",
                             json={"kind": "block", "reason": "harvesting", "ttl": "1h",
                                   "analyst": "ann"})
        assert r.status_code == 201 and r.json()["author"] == "analyst:ann"
        assert not harness.runtime.policy.admit("mallory").allowed
        r = await admin.delete("/admin/accounts/mallory/actions",
                               headers={"x-analyst": "bob"})
        assert r.status_code == 200
        assert harness.runtime.policy.admit("mallory").allowed
        log = (await admin.get("/admin/audit", params={"account": "mallory"})).json()["data"]
        assert [(e["op"], e["author"]) for e in log] == [("lift", "analyst:bob"),
                                                         ("set", "analyst:ann")]
    assert key


async def test_verify_lifts_a_challenge(harness):
    async with harness.http(headers=AUTH) as admin:
        await admin.post("/admin/accounts/carol/actions",
                         json={"kind": "challenge", "reason": "odd sign-up"})
        assert not harness.runtime.policy.admit("carol").allowed
        r = await admin.post("/admin/accounts/carol/verify")
        assert r.status_code == 200 and r.json()["verified"] is True
        assert harness.runtime.policy.admit("carol").allowed
        r = await admin.post("/admin/accounts/carol/verify")
        assert r.status_code == 404


@pytest.mark.parametrize("method, path, body, status, param", [
    ("post", "/admin/accounts/x/actions", {"kind": "ban", "reason": "r"}, 400, "kind"),
    ("post", "/admin/accounts/x/actions", {"kind": "block"}, 400, "reason"),
    ("post", "/admin/accounts/x/actions", {"kind": "block", "reason": "r", "ttl": "soon"},
     400, "ttl"),
    ("post", "/admin/accounts/x/actions", {"kind": "throttle", "reason": "r",
                                           "rate_factor": 3}, 400, "rate_factor"),
    ("delete", "/admin/accounts/nobody/actions", None, 404, "name"),
    ("get", "/admin/risk?limit=zero", None, 400, "limit"),
    ("get", "/admin/campaigns/cmp_nope", None, 404, "campaign_id"),
    ("get", "/admin/accounts/nobody", None, 404, "name"),
])
async def test_bad_admin_input_gets_openai_shaped_errors(harness, method, path, body,
                                                         status, param):
    async with harness.http(headers=AUTH) as admin:
        kwargs = {"json": body} if body is not None else {}
        r = await getattr(admin, method)(path, **kwargs)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


async def test_analyst_routes_need_the_admin_token(harness):
    async with harness.http() as client:
        r = await client.get("/admin/risk")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
