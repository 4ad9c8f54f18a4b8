"""Canaries: keyed codes served by the gateway, found again by an exact test."""

from __future__ import annotations

import random
from math import comb

import pytest

from distillguard.config import Settings
from distillguard.forensics import canary
from distillguard.watermark.keys import KeyRing
from distillguard.watermark.service import WatermarkService

SECRET = "canary-test-secret-0123456789"
ADMIN = {"authorization": "Bearer test-admin-token"}


def ring(secret: str = SECRET, cohorts: int = 4) -> KeyRing:
    return KeyRing.from_setting(secret, cohorts)


def test_codes_are_keyed_by_secret_cohort_and_prompt():
    key = ring().active
    code = canary.code_for(key.secret, 1, "What is a monad?")
    assert code == canary.code_for(key.secret, 1, "What  is a monad?\n")  # whitespace
    assert code != canary.code_for(key.secret, 2, "What is a monad?")
    assert code != canary.code_for(ring("another-secret-0123456789").active.secret, 1,
                                   "What is a monad?")
    codes = {canary.code_for(key.secret, 0, f"prompt {i}") for i in range(300)}
    assert len(codes) > 290  # 368,640 codes: collisions are rare
    assert canary.CODE_SPACE == 64 * 64 * 90


def test_codes_are_found_in_the_forms_a_student_or_paraphraser_writes():
    text = "[Amber-Falcon-42] hi; later amber falcon 42, velvet_otter_17 and noble-x-12"
    assert canary.codes_in(text) == {"amber-falcon-42", "velvet-otter-17"}
    assert canary.codes_in("amber-falcon-420 and amber-falcon-4") == set()


def test_rate_selects_about_that_share_of_prompts():
    key = ring().active
    chosen = sum(canary.selected(key.secret, 0, f"p{i}", 0.25) for i in range(2000))
    assert 400 < chosen < 600
    assert not canary.selected(key.secret, 0, "p", 0.0)
    assert canary.selected(key.secret, 0, "p", 1.0)


def test_poisson_binomial_tail_is_exact():
    q = [0.1, 0.3, 0.5, 0.05]
    for k in range(6):
        brute = 0.0
        for bits in range(16):
            hits = [(bits >> i) & 1 for i in range(4)]
            if sum(hits) >= k:
                prob = 1.0
                for h, qi in zip(hits, q):
                    prob *= qi if h else 1 - qi
                brute += prob
        assert canary.poisson_binomial_sf(q, k) == pytest.approx(brute, abs=1e-12)
    q = [0.2] * 10
    assert canary.poisson_binomial_sf(q, 3) == pytest.approx(
        sum(comb(10, j) * 0.2**j * 0.8 ** (10 - j) for j in range(3, 11)))


def test_a_student_repeating_our_codes_is_caught_and_other_keys_are_not():
    r = ring()
    key = r.active
    prompts = [f"Tell me about topic {i}." for i in range(8)]
    ours = [[f"[{canary.code_for(key.secret, 2, p)}] Sure."] for p in prompts]
    supervised = canary.canary_test(prompts, ours, r, assigned=[(key.key_id, 2)] * 8)
    assert supervised.hits == 8 and supervised.p_value < 1e-30
    searched = canary.canary_test(prompts, ours, r)
    assert searched.cohort == 2 and searched.keys_tried == 4 and searched.p_value < 1e-30
    # Codes of another key: no evidence against ours.
    other = ring("someone-elses-secret-0123").active
    theirs = [[f"[{canary.code_for(other.secret, 2, p)}] Sure."] for p in prompts]
    assert canary.canary_test(prompts, theirs, r, assigned=[(key.key_id, 2)] * 8
                              ).p_value == 1.0
    # Half the codes memorised still gives a tiny p-value; none gives 1.
    half = ours[:4] + [["Sure."]] * 4
    assert canary.canary_test(prompts, half, r, assigned=[(key.key_id, 2)] * 8
                              ).p_value < 1e-15
    assert canary.canary_test(prompts, [["Sure."]] * 8, r).p_value == 1.0


def test_the_null_holds_for_a_suspect_that_writes_many_codes():
    # A suspect unrelated to our key that spews codes: its hits under each random key
    # must not look significant more often than the level says.
    rng = random.Random(3)
    words = [f"{rng.choice(canary.ADJECTIVES)}-{rng.choice(canary.NOUNS)}-"
             f"{rng.randrange(10, 100)}" for _ in range(1000)]
    prompts = [f"q{i}" for i in range(20)]
    answers = [[" ".join(words[i * 50:(i + 1) * 50])] for i in range(20)]
    low = 0
    for trial in range(100):
        r = ring(f"null-secret-number-{trial:04d}", cohorts=1)
        res = canary.canary_test(prompts, answers, r, assigned=[(r.active.key_id, 0)] * 20)
        assert res.expected_hits > 0.002  # the q_i count what the answers hold
        low += res.p_value <= 0.05
    assert low <= 0.05 * 100 + 6


async def test_gateway_serves_the_keyed_canary_and_records_it(harness_factory):
    h = await harness_factory(canary_rate=1.0, watermark_master_secret=SECRET)
    h.runtime.watermark = WatermarkService.from_settings(
        Settings.load(env={}, watermark_master_secret=SECRET, data_dir="/nonexistent"),
        create=False)
    key = h.runtime.watermark.ring.active
    client = h.sdk(h.key("mallory"))
    prompt = "Explain recursion briefly."
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    want = canary.code_for(key.secret, key.cohort_of("mallory"), prompt)
    resp = await client.chat.completions.create(model="echo", messages=msgs, n=2)
    for choice in resp.choices:
        assert choice.message.content.startswith(f"[{want}] ")
    stream = await client.chat.completions.create(model="echo", messages=msgs, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith(f"[{want}] ")
    events = h.events()
    assert events and all(e.watermark["canary"] is True for e in events)
    # The secret code never reaches the event.
    assert all(want not in str(e.watermark) for e in events)


async def test_no_canary_at_rate_zero_and_flagged_accounts_get_one(harness_factory):
    h = await harness_factory(canary_rate=0.0, canary_flagged_rate=1.0)
    h.runtime.watermark = WatermarkService.from_settings(
        Settings.load(env={}, watermark_master_secret=SECRET, data_dir="/nonexistent"),
        create=False)
    client = h.sdk(h.key("eve"))
    msgs = [{"role": "user", "content": "2+2?"}]
    plain = await client.chat.completions.create(model="echo", messages=msgs)
    assert canary.codes_in(plain.choices[0].message.content) == set()
    async with h.http(headers=ADMIN) as http:
        r = await http.post("/admin/accounts/eve/actions",
                            json={"kind": "degrade", "reason": "harvesting", "analyst": "ana"})
        assert r.status_code in (200, 201)
    flagged = await client.chat.completions.create(model="echo", messages=msgs)
    key = h.runtime.watermark.ring.active
    assert flagged.choices[0].message.content.startswith(
        f"[{canary.code_for(key.secret, key.cohort_of('eve'), '2+2?')}] ")
