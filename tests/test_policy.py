"""Policy: actions take effect on the next call, expire, are audited; rules act on risk;
reasoning traces are stripped for degraded accounts. Same tests for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from distillguard.config import Settings, SettingsError
from distillguard.detection.snapshot import DetectionSnapshot, take_snapshot
from distillguard.policy.degrade import strip_reasoning
from distillguard.policy.engine import PolicyEngine
from distillguard.policy.rules import DEFAULT_RULES, FIXED_RULES, load_rules
from distillguard.policy.store import open_action_store
from test_detection import harvester, population, run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""
    return Settings.load(env={}, data_dir=str(tmp_path), store=request.param,
                         postgres_dsn=dsn, policy_cache_ttl=0.05)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(settings: Settings, clock: Clock) -> Iterator[PolicyEngine]:
    e = PolicyEngine.from_settings(settings)
    e.clock = clock
    try:
        yield e
    finally:
        e.close()


def test_analyst_action_applies_on_the_next_call_and_lifting_restores(engine):
    assert engine.admit("mallory").allowed
    engine.set_action("mallory", "block", reason="harvesting", author="analyst:ann")
    decision = engine.admit("mallory")
    assert not decision.allowed and decision.action.kind == "block"
    assert "harvest" not in decision.reason  # the client sees a neutral message
    assert engine.lift("mallory", author="analyst:ann", reason="false alarm") is not None
    assert engine.admit("mallory").allowed


def test_action_set_by_another_process_is_seen(settings, engine):
    other = PolicyEngine.from_settings(settings)
    try:
        assert engine.current_action("eve") is None
        other.set_action("eve", "challenge", reason="verify", author="analyst:bob")
        import time
        time.sleep(0.06)  # PostgreSQL: past policy_cache_ttl; SQLite sees it at once
        action = engine.current_action("eve")
        assert action is not None and action.kind == "challenge"
        assert not engine.admit("eve").allowed
    finally:
        other.close()


def test_stored_action_expires_after_its_ttl(engine, clock):
    engine.set_action("tmp", "block", reason="cool down", author="analyst:ann", ttl=60)
    assert engine.current_action("tmp").kind == "block"
    clock.now += 59
    assert not engine.admit("tmp").allowed
    clock.now += 2
    assert engine.current_action("tmp") is None
    assert engine.admit("tmp").allowed


def test_audit_log_records_set_and_lift_with_author(engine):
    engine.set_action("acct", "throttle", reason="suspicious", author="analyst:ann",
                      rate_factor=0.5)
    engine.lift("acct", author="analyst:bob", reason="checked")
    entries = engine.audit(account="acct")
    assert [(e.op, e.kind, e.author) for e in entries] == [
        ("lift", "throttle", "analyst:bob"), ("set", "throttle", "analyst:ann")]
    assert entries[0].reason == "checked" and entries[1].rate_factor == 0.5


def test_throttle_admits_at_the_reduced_rate(engine):
    engine.base_rpm = 60.0
    engine.set_action("t", "throttle", reason="slow down", author="analyst:ann",
                      rate_factor=0.1)  # 6 requests a minute, bursts of 1
    first = engine.admit("t")
    second = engine.admit("t")
    assert first.allowed and not second.allowed
    assert 8.0 < second.retry_after <= 10.0


def test_bad_actions_are_refused(engine):
    with pytest.raises(ValueError):
        engine.set_action("x", "ban", reason="r", author="analyst:a")
    with pytest.raises(ValueError):
        engine.set_action("x", "throttle", reason="r", author="analyst:a", rate_factor=2)
    with pytest.raises(ValueError):
        engine.set_action("x", "block", reason="r", author="analyst:a", rate_factor=0.5)


def test_rules_block_the_harvester_and_leave_people_alone(engine):
    import random

    pipeline = run(population(random.Random(5)) + harvester())
    changed = engine.evaluate(take_snapshot(pipeline, 0.0))
    assert [(a.account, a.kind) for a in changed] == [("harvest", "block")]
    action = engine.current_action("harvest")
    assert action.author == "rule:block-harvester" and action.expires_at is not None
    assert "risk" in action.reason
    assert engine.evaluate(take_snapshot(pipeline, 0.0)) == []  # nothing new: no audit spam


def test_rules_never_override_an_analyst(engine):
    import random

    pipeline = run(population(random.Random(5)) + harvester())
    engine.set_action("harvest", "allow", reason="known research partner",
                      author="analyst:ann", ttl=3600)
    assert engine.evaluate(take_snapshot(pipeline, 0.0)) == []
    assert engine.admit("harvest").allowed


def test_rules_load_from_the_policy_section(tmp_path):
    path = tmp_path / "dg.toml"
    path.write_text('port = 8001\n[policy]\n[[policy.rules]]\nname = "strict"\n'
                    'action = "throttle"\nmin_risk = 0.3\nrate_factor = 0.5\nttl = "15m"\n')
    rules = load_rules(path)
    assert [(r.name, r.action, r.ttl, r.rate_factor) for r in rules] == [
        ("strict", "throttle", 900.0, 0.5)]
    assert Settings.load(env={}, file=path).port == 8001  # settings skip [policy]
    assert load_rules("") == list(DEFAULT_RULES)


@pytest.mark.parametrize("body, message", [
    ('name = "x"\naction = "ban"', "unknown action kind"),
    ('name = "x"\naction = "throttle"', "rate_factor"),
    ('name = "x"\naction = "block"\nttl = "soon"', "ttl"),
    ('name = "x"\naction = "block"\nsignal = "nope"', "no signal named"),
    ('name = "x"\naction = "block"\nmin_rsk = 0.5', "unknown field"),
])
def test_bad_rules_name_the_problem(tmp_path, body, message):
    path = tmp_path / "p.toml"
    path.write_text(f"[[policy.rules]]\n{body}\n")
    with pytest.raises(SettingsError, match=message):
        load_rules(path)


def test_every_action_store_opens(tmp_path):
    store = open_action_store(Settings.load(env={}, data_dir=str(tmp_path)))
    assert store.name == "sqlite" and store.actions() == []
    store.close()


@pytest.mark.parametrize("text, expected", [
    ("<think>2+2... carry the one</think>\nThe answer is 4.", "The answer is 4."),
    ("<THINKING>a\nb</THINKING>Done.", "Done."),
    ("Sure. <think>the model was cut off mid-thought", "Sure."),
    ("I reason here.</think>Paris.", "Paris."),
    ("Step 1: add 2 and 2.\nStep 2: check it.\nFinal answer: 4", "Final answer: 4"),
    ("Let's think step by step. 3 cats...\n**Answer:** 3", "**Answer:** 3"),
    ("Tips:\n1. Sleep\n2. Eat well", "Tips:\n1. Sleep\n2. Eat well"),  # a list is content
    ("Answer: 42", "Answer: 42"),
])
def test_strip_reasoning(text, expected):
    assert strip_reasoning(text) == expected


def test_throttle_refills_on_the_engines_clock(engine, clock):
    # A simulated clock (replay) must refill the bucket: the wall clock hardly moves here.
    engine.base_rpm = 60.0
    engine.set_action("t", "throttle", reason="slow down", author="analyst:ann",
                      rate_factor=0.1)  # one request every 10 s
    assert engine.admit("t").allowed
    assert not engine.admit("t").allowed
    clock.now += 10.5
    assert engine.admit("t").allowed
    assert not engine.admit("t").allowed


def _slow_account(risk: float, rpm: float) -> DetectionSnapshot:
    """Just what ``evaluate`` reads: one campaign-free account at a known rate."""
    from distillguard.detection.pipeline import AccountRisk

    account = AccountRisk("slow", risk, risk, 500, [], {})
    return DetectionSnapshot(0.0, {"slow": account}, (account,), (), {}, {"slow": rpm})


def test_rule_throttle_binds_an_account_that_is_slow_already(engine, clock):
    # throttle-suspect (rate_factor 0.2) on an account sending 1 request a minute:
    # a fixed 0.2 x 60 = 12 rpm would not slow it down at all; 0.2 x its own rate does.
    engine.rules = list(FIXED_RULES)  # the uncalibrated rules hold the throttle
    engine.base_rpm = 60.0
    [action] = engine.evaluate(_slow_account(0.65, 1.0))
    assert action.kind == "throttle"
    assert action.rate_factor == pytest.approx(0.2 * 1.0 / 60.0)
    assert "its own observed 1.00" in action.reason
    served = 0
    for _ in range(60):  # an hour at its old pace
        served += engine.admit("slow").allowed
        clock.now += 60.0
    assert served <= 13  # about 0.2 of the 60 it sent


def test_absolute_throttle_when_relative_is_off(engine):
    engine.rules = list(FIXED_RULES)
    engine.base_rpm = 60.0
    engine.relative_throttle = False
    [action] = engine.evaluate(_slow_account(0.65, 1.0))
    assert action.rate_factor == pytest.approx(0.2)


def test_campaign_rule_min_link(tmp_path):
    path = tmp_path / "dg.toml"
    path.write_text('[policy]\n[[policy.rules]]\nname = "c"\naction = "challenge"\n'
                    'scope = "campaign"\nmin_risk = 0.6\nmin_link = 0.8\n')
    assert load_rules(path)[0].min_link == 0.8
    path.write_text('[policy]\n[[policy.rules]]\nname = "c"\naction = "challenge"\n'
                    'min_risk = 0.6\nmin_link = 0.8\n')
    with pytest.raises(SettingsError, match="min_link applies only"):
        load_rules(path)


def test_default_thresholds_match_whether_detection_embeds():
    from distillguard.policy.rules import calibrated_rules

    def cal(t: float) -> dict:
        return {"note": f"run {t}", "rules": {
            "block-harvester": {"min_risk": t, "benign_max": t - 0.03},
            "block-campaign": {"min_risk": t}}}

    both = {**cal(0.43), "embeddings": True, "without_embeddings": cal(0.34)}
    on = {r.name: r for r in calibrated_rules(both)}
    off = {r.name: r for r in calibrated_rules(both, embeddings=False)}
    assert on["block-harvester"].min_risk == 0.43 and "run 0.43" in on["block-harvester"].note
    assert off["block-harvester"].min_risk == off["block-campaign"].min_risk == 0.34
    assert "run 0.34" in off["block-campaign"].note
    # A calibration made without embeddings serves both.
    assert calibrated_rules(cal(0.34), embeddings=True)[0].min_risk == 0.34


def _campaign_member(own: float, campaign: float, name: str = "m") -> DetectionSnapshot:
    """A core member of a campaign: its risk is the campaign's, its own risk lower."""
    from distillguard.detection.pipeline import AccountRisk, Reason

    reasons = [Reason("campaign", "campaign", campaign, campaign, None,
                      "member of campaign cmp_x"),
               Reason("templating", "automation", 1.0, 1.0, None, "reuses one template")]
    account = AccountRisk(name, campaign, own, 500, reasons, {}, "cmp_x")
    return DetectionSnapshot(0.0, {name: account}, (account,), (), {}, {name: 1.0})


def test_the_calibrated_account_rule_reads_the_accounts_own_risk(engine, tmp_path):
    # The calibration held block-harvester to benign accounts' own risk; a benign group
    # of linked apps scores above it as a campaign, which block-campaign is set for.
    engine.rules = [r for r in DEFAULT_RULES if r.name == "block-harvester"]
    rule = engine.rules[0]
    assert rule.own and "own risk" in (rule.note or "")
    assert engine.evaluate(_campaign_member(rule.min_risk - 0.1, rule.min_risk + 0.02)) == []
    [action] = engine.evaluate(_campaign_member(rule.min_risk + 0.01, rule.min_risk + 0.02))
    assert action.kind == "block" and "own risk" in action.reason
    assert "member of campaign" not in action.reason.split("[")[0]
    # A rule without ``own`` compares the risk its campaign lifted, as documented.
    path = tmp_path / "p.toml"
    path.write_text('[policy]\n[[policy.rules]]\nname = "r"\naction = "block"\n'
                    'min_risk = 0.3\n')
    engine.rules = load_rules(path)
    assert not engine.rules[0].own
    [action] = engine.evaluate(_campaign_member(0.1, 0.35, "n"))
    assert action.kind == "block"
    path.write_text('[policy]\n[[policy.rules]]\nname = "r"\naction = "block"\n'
                    'scope = "campaign"\nown = true\n')
    with pytest.raises(SettingsError, match="own applies only"):
        load_rules(path)
    path.write_text('[policy]\n[[policy.rules]]\nname = "r"\naction = "block"\n'
                    'own = "yes"\n')
    with pytest.raises(SettingsError, match="own must be true or false"):
        load_rules(path)


class _Keys:
    """The key store as detection reads it: each account's first key time."""

    def __init__(self, made: dict[str, float]) -> None:
        from distillguard.telemetry.keys import KeyRecord

        self.records = [KeyRecord(f"key_{a}", a, "sk-dg-t", t) for a, t in made.items()]

    def list_keys(self, account=None):
        return [r for r in self.records if account in (None, r.account)]


def _plain_answers(account: str, n: int, out: int) -> list:
    """What a busy application sends: plain questions, no reasoning asked, one every 4 s."""
    import random

    from test_detection import T0, TOPICS, event

    rnd = random.Random(account)
    return [event(account, T0 + 4.0 * i, f"user: what should I know about "
                  f"{rnd.choice(TOPICS)} number {rnd.randint(1, 10**6)}?", out=out,
                  params={"temperature": 0}, ua="OpenAI/Python 1.40.0", i=i)
            for i in range(n)]


def test_new_accounts_are_throttled_past_their_allowance_and_established_ones_are_not(
        engine, clock):
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.policy.rules import NEW_ACCOUNT_ALLOWANCE
    from test_detection import T0

    assert NEW_ACCOUNT_ALLOWANCE in DEFAULT_RULES
    day = 86400.0
    keys = _Keys({"fresh": T0 - 2 * day, "veteran": T0 - 200 * day, "light": T0 - day})
    events = (_plain_answers("fresh", 1000, 512) + _plain_answers("veteran", 1000, 512)
              + _plain_answers("light", 300, 512) + _plain_answers("keyless", 1000, 512))
    pipeline = DetectionPipeline(store=keys)
    for e in sorted(events, key=lambda e: e.ts):
        pipeline.observe(e)
    pipeline.refresh()
    fresh = pipeline.account_risk("fresh")
    assert fresh.served_tokens == 512_000 and 2 * day < fresh.age_s <= 2 * day + 4000
    assert pipeline.account_risk("keyless").age_s is None
    engine.rules = [NEW_ACCOUNT_ALLOWANCE]
    engine.base_rpm = 60.0
    changed = engine.evaluate(take_snapshot(pipeline, T0 + 4000))
    # 512k taken two days in, over 250k + 2 x 100k; the same 512k from a 200-day-old
    # account, 154k from a new one, and an account no key store knows are left alone.
    assert [(a.account, a.kind) for a in changed] == [("fresh", "throttle")]
    action = engine.current_action("fresh")
    assert action.author == "rule:new-account-allowance"
    assert "512,000 completion tokens" in action.reason and "allowance of 45" in action.reason
    from distillguard.gateway import admission, errors
    from distillguard.gateway.context import RequestContext

    served, refusals = 0, []
    for _ in range(15):  # a minute at its old pace: a tenth of it gets through
        ctx = RequestContext("/v1/chat/completions", "203.0.113.9", "sdk", ts=clock.now)
        ctx.account = "fresh"
        try:
            admission.admit(engine, ctx)
            served += 1
        except errors.RateLimited as exc:
            refusals.append(exc)
        clock.now += 4.0
    assert served <= 3
    # The customer is told why, as the OpenAI shape carries it.
    body = refusals[0].body()["error"]
    assert body["code"] == "new_account_allowance" and "is new" in body["message"]


def test_allowance_rules_load_and_bad_ones_name_the_field(tmp_path):
    path = tmp_path / "dg.toml"
    head = '[policy]\n[[policy.rules]]\nname = "tier"\naction = "throttle"\nrate_factor = 0.1\n'
    path.write_text(head + 'max_age = "14d"\nallowance = 1000\nallowance_per_day = 10\n')
    [rule] = load_rules(path)
    assert (rule.max_age, rule.allowance_at(2 * 86400.0)) == (14 * 86400.0, 1020.0)
    path.write_text(head + 'allowance = 1000\n')
    with pytest.raises(SettingsError, match="allowance and allowance_per_day need max_age"):
        load_rules(path)
    path.write_text(head + 'max_age = "soon"\n')
    with pytest.raises(SettingsError, match="max_age must be seconds"):
        load_rules(path)
    path.write_text(head + 'max_age = "1d"\nscope = "campaign"\n')
    with pytest.raises(SettingsError, match="max_age applies only"):
        load_rules(path)


def test_an_allowance_rule_honours_the_other_conditions_it_sets(engine):
    """``min_risk`` on an allowance rule is one more condition, not ignored."""
    import dataclasses

    from distillguard.detection.pipeline import AccountRisk
    from distillguard.policy.rules import NEW_ACCOUNT_ALLOWANCE

    young = AccountRisk("young", 0.1, 0.1, 500, [], {}, age_s=86400.0, served_tokens=10**6)
    snapshot = DetectionSnapshot(0.0, {"young": young}, (young,), (), {}, {})
    engine.rules = [dataclasses.replace(NEW_ACCOUNT_ALLOWANCE, min_risk=0.5)]
    assert engine.evaluate(snapshot) == []
    engine.rules = [NEW_ACCOUNT_ALLOWANCE]
    assert [a.account for a in engine.evaluate(snapshot)] == ["young"]
