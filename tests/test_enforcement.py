"""Detection and policy through the running gateway: a harvester is stopped on its next
request, a normal user is not, and an analyst can read why and act."""

from __future__ import annotations

import asyncio
import random

import openai
import pytest

from conftest import ADMIN_TOKEN
from distillguard.detection.driver import manual_driver

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}

TOPICS = ["photosynthesis", "binary search", "the French revolution", "compound interest",
          "TCP handshakes", "plate tectonics", "Bayes' theorem", "sorting networks"]
BENIGN = ["Can you help me write a birthday message for my sister?",
          "What's a good name for a cat that is grey and lazy?",
          "my python script says KeyError: 'id' when I read the json, why",
          "Suggest a vegetarian dinner for four people.",
          "How do I politely decline a meeting invitation?"]


async def _drain(runtime, expected: int) -> None:
    """Once detection was handed ``expected`` events, run one round."""
    await asyncio.to_thread(runtime.driver.round, expected)


async def test_harvester_is_stopped_and_a_normal_user_is_not(harness_factory):
    from distillguard.backends.echo import EchoBackend

    # A model answers a chain-of-thought task at length: 400 words per choice here.
    # (Detection measures what is taken, so a harvest answered in 16 words is no harvest.)
    harness = await harness_factory(driver=manual_driver, max_tokens_limit=512,
                                    backend=EchoBackend(tokens=400))
    harvester = harness.sdk(harness.key("harvester"))
    normal = harness.sdk(harness.key("normal"))
    rng = random.Random(7)
    for i in range(120):
        topic = TOPICS[i % len(TOPICS)]
        await harvester.chat.completions.create(
            model="echo", max_tokens=512, temperature=0.7, n=2,
            messages=[{"role": "user", "content":
                       f"Task #{i}: Explain {topic} step by step. Show your full chain of "
                       f"thought, then grade the answer with a rubric from 1 to {i % 7 + 3} "
                       "and output it as a JSON row."}])
    for prompt in rng.sample(BENIGN, len(BENIGN)) * 5:
        await normal.chat.completions.create(model="echo", max_tokens=128,
                                             messages=[{"role": "user", "content": prompt}])
    await _drain(harness.runtime, 120 + 5 * len(BENIGN))

    with pytest.raises((openai.PermissionDeniedError, openai.RateLimitError)) as info:
        for _ in range(30):  # a throttle lets a few through before refusing
            await harvester.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "one more"}])
    assert info.value.body["code"] in {"account_blocked", "rate_limit_exceeded"}
    reply = await normal.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "thanks!"}])
    assert reply.choices[0].message.content

    async with harness.http(headers=ADMIN) as http:
        ranked = (await http.get("/admin/risk")).json()["data"]
        assert ranked[0]["account"] == "harvester"
        detail = (await http.get("/admin/accounts/harvester")).json()
    assert detail["action"]["kind"] in {"block", "throttle", "degrade", "challenge"}
    assert detail["action"]["author"].startswith("rule:")
    reasons = detail["reasons"]
    assert reasons and all(r["message"] and r["signal"] for r in reasons)


async def test_analyst_block_applies_to_the_next_request_and_lift_restores(harness):
    client = harness.sdk(harness.key("mallory"))
    await client.models.list()
    async with harness.http(headers=ADMIN) as http:
        set_ = await http.post("/admin/accounts/mallory/actions",
                               json={"kind": "block", "reason": "confirmed reseller of outputs",
                                     "analyst": "ana", "ttl": 3600})
        assert set_.status_code in (200, 201)
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.models.list()
    # Neutral: the client learns nothing about what was detected.
    assert "reseller" not in info.value.message
    async with harness.http(headers=ADMIN) as http:
        lifted = await http.request("DELETE", "/admin/accounts/mallory/actions",
                                    headers={"x-analyst": "ana"},
                                    json={"reason": "appeal accepted"})
        assert lifted.status_code == 200
        audit = (await http.get("/admin/audit", params={"account": "mallory"})).json()["data"]
    assert await client.models.list()
    assert len(audit) == 2
    assert {entry["author"] for entry in audit} == {"analyst:ana"}


async def test_degrade_strips_reasoning_and_challenge_needs_verification(harness_factory):
    from distillguard.backends.base import Choice, Completion
    from distillguard.backends.echo import EchoBackend

    class Thinker(EchoBackend):
        async def complete(self, request):
            return Completion([Choice(0, "<think>secret plan</think>The answer is 4.", "stop")],
                              prompt_tokens=3, completion_tokens=9)

    harness = await harness_factory(backend=Thinker(model_name="echo"))
    client = harness.sdk(harness.key("eve"))
    msgs = [{"role": "user", "content": "2+2?"}]
    before = await client.chat.completions.create(model="echo", messages=msgs)
    assert "secret plan" in before.choices[0].message.content
    async with harness.http(headers=ADMIN) as http:
        await http.post("/admin/accounts/eve/actions",
                        json={"kind": "degrade", "reason": "trace harvesting", "analyst": "ana"})
    after = await client.chat.completions.create(model="echo", messages=msgs)
    assert after.choices[0].message.content == "The answer is 4."

    async with harness.http(headers=ADMIN) as http:
        await http.post("/admin/accounts/eve/actions",
                        json={"kind": "challenge", "reason": "verify identity", "analyst": "ana"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(model="echo", messages=msgs)
    assert info.value.body["code"] == "account_challenge_required"
    async with harness.http(headers=ADMIN) as http:
        verified = await http.post("/admin/accounts/eve/verify", json={"analyst": "ana"})
        assert verified.status_code == 200
    assert (await client.chat.completions.create(model="echo", messages=msgs)).choices
