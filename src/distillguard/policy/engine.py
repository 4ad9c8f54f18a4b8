"""``PolicyEngine``: rules turn risk into actions; admission reads them on every request.

``current_action(account)`` is a dictionary lookup after one cheap version check: the
engine holds every stored action in memory and reloads them all when the store's
``version()`` moves (any process set or lifted one) or, for stores that cannot tell,
when ``policy_cache_ttl`` has passed. Actions set through this engine apply to the
account's very next request in this process; set by another process, on its next
request after the version moves (SQLite) or within ``policy_cache_ttl`` (PostgreSQL).

``admit(account)`` is what the gateway calls: block and challenge refuse; throttle
admits through a per-account token bucket of ``base_rpm * rate_factor`` requests per
minute (``base_rpm`` = ``rate_limit_rpm`` when set, else ``policy_throttle_rpm``), kept
in this process, so it works without configured rate limits.

A rule's throttle is relative (``relative_throttle``, the default): its stored
``rate_factor`` is the rule's factor times ``min(1, observed_rpm / base_rpm)``, where
``observed_rpm`` is the account's own mean rate as detection saw it. A fixed fraction
of the base rate would not bind a swarm member that sends one request a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distillguard.policy.actions import SEVERITY, Action, Decision, check_action
from distillguard.policy.rules import DEFAULT_RULES, Rule, load_rules
from distillguard.telemetry.store import VERSION_UNKNOWN

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.pipeline import AccountRisk
    from distillguard.detection.snapshot import DetectionSnapshot
    from distillguard.policy.store import ActionStore

_NEUTRAL = "this account cannot use the API at the moment"


class PolicyEngine:
    """Actions per account: set by rules or analysts, cached, enforced by ``admit``."""

    def __init__(self, store: ActionStore, rules: list[Rule] | None = None, *,
                 cache_ttl: float = 1.0, base_rpm: float = 60.0,
                 degrade_strength: float = 2.0, relative_throttle: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.rules = list(DEFAULT_RULES if rules is None else rules)
        self.cache_ttl = cache_ttl
        self.base_rpm = base_rpm
        self.degrade_strength = degrade_strength
        self.relative_throttle = relative_throttle
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, Action] = {}
        self._version: int | None = None
        self._loaded_at = -1.0
        # account -> (tokens, clock time of last refill, created_at of the action it
        # serves) of the throttle bucket; a new action starts a full bucket.
        self._buckets: dict[str, tuple[float, float, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyEngine:
        """The engine with the settings' action store, rules and throttle base rate."""
        from distillguard.detection.pipeline import embeddings_available
        from distillguard.policy.store import open_action_store

        # The default thresholds match how detection will run: with embeddings or not.
        rules = load_rules(settings.policy_file, embeddings=embeddings_available(settings))
        base = float(settings.rate_limit_rpm or settings.policy_throttle_rpm)
        return cls(open_action_store(settings), rules, cache_ttl=settings.policy_cache_ttl,
                   base_rpm=base, degrade_strength=settings.policy_degrade_watermark_strength,
                   relative_throttle=settings.policy_throttle_relative)

    # --- reading ---------------------------------------------------------------------
    def _reload_if_stale(self) -> None:
        version = self.store.version()
        now = time.monotonic()
        if version == self._version and (version != VERSION_UNKNOWN
                                         or now - self._loaded_at < self.cache_ttl):
            return
        actions = self.store.actions()
        with self._lock:
            self._cache = {a.account: a for a in actions}
            self._version = version
            self._loaded_at = now

    def current_action(self, account: str) -> Action | None:
        """The account's action in force now, or None (expired actions are None)."""
        self._reload_if_stale()
        action = self._cache.get(account)
        if action is None or not action.active(self.clock()):
            return None
        return action

    def admit(self, account: str) -> Decision:
        """Whether the account's request may proceed now, and under which action."""
        action = self.current_action(account)
        if action is None or action.kind in ("allow", "degrade"):
            return Decision(True, action=action)
        if action.kind == "block":
            return Decision(False, reason=_NEUTRAL, action=action)
        if action.kind == "challenge":
            return Decision(False, reason="this account must be verified again before it "
                                          "can use the API", action=action)
        return self._take_token(account, action)

    def _take_token(self, account: str, action: Action) -> Decision:
        per_s = self.base_rpm * (action.rate_factor or 1.0) / 60.0
        capacity = max(1.0, per_s * 10.0)  # bursts of up to 10 s of the throttled rate
        # The engine's clock, not the wall clock: a simulated clock (replay, tests) must
        # refill the bucket as its own time passes.
        now = self.clock()
        with self._lock:
            tokens, last, created = self._buckets.get(account, (capacity, now,
                                                                action.created_at))
            if created != action.created_at:  # set by another process since: start full
                tokens, last, created = capacity, now, action.created_at
            tokens = min(capacity, tokens + max(0.0, now - last) * per_s)
            if tokens >= 1.0:
                self._buckets[account] = (tokens - 1.0, now, created)
                return Decision(True, action=action)
            self._buckets[account] = (tokens, now, created)
        return Decision(False, retry_after=(1.0 - tokens) / per_s,
                        reason="rate limit reached for this account", action=action)

    # --- changing --------------------------------------------------------------------
    def set_action(self, account: str, kind: str, *, reason: str, author: str,
                   ttl: float | None = None, rate_factor: float | None = None) -> Action:
        """Store a new action for the account; it applies to its next request.

        ValueError on an unknown kind, a bad rate_factor or a non-positive ttl.
        """
        check_action(kind, rate_factor)
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive seconds")
        now = self.clock()
        action = Action(account, kind, reason, author, now,
                        None if ttl is None else now + ttl, rate_factor)
        self.store.set_action(action)
        with self._lock:
            self._cache[account] = action
            self._buckets.pop(account, None)
            self._version = None  # our own write moved the version: reload next time
        return action

    def lift(self, account: str, *, author: str, reason: str = "") -> Action | None:
        """Remove the account's action (audited); the lifted action, or None if none."""
        lifted = self.store.lift(account, author=author, reason=reason)
        with self._lock:
            self._cache.pop(account, None)
            self._buckets.pop(account, None)
            self._version = None
        return lifted

    def note(self, account: str, op: str, *, reason: str, author: str) -> None:
        """Audit a step that changes no action (sign-up decisions, step-up progress)."""
        self.store.note(account, op, reason=reason, author=author)

    def actions(self) -> list[Action]:
        """Actions in force now."""
        self._reload_if_stale()
        now = self.clock()
        return [a for a in self._cache.values() if a.active(now)]

    def audit(self, *, account: str | None = None, limit: int = 100) -> list[Any]:
        """The audit log, newest first."""
        return self.store.audit(account=account, limit=limit)

    def watermark_strength(self, account: str) -> float:
        """Strength to ask the watermark for: ``degrade_strength`` under degrade, else 1."""
        action = self.current_action(account)
        return self.degrade_strength if action and action.kind == "degrade" else 1.0

    # --- rules -----------------------------------------------------------------------
    def evaluate(self, snapshot: DetectionSnapshot) -> list[Action]:
        """Apply the rules to every account and campaign of a detection round's
        snapshot; return the actions set.

        An analyst's action is never replaced by a
        rule while it lasts; a rule replaces a rule's action only with a more severe one.
        """
        wanted: dict[str, tuple[Rule, str]] = {}

        def want(account: str, rule: Rule, why: str) -> None:
            held = wanted.get(account)
            if held is None or SEVERITY[rule.action] > SEVERITY[held[0].action]:
                wanted[account] = (rule, why)

        account_rules = [r for r in self.rules if r.scope == "account"]
        campaign_rules = [r for r in self.rules if r.scope == "campaign"]
        if account_rules:
            for account, risk in snapshot.risks.items():
                strengths = {r.signal: r.strength for r in risk.reasons}
                for rule in account_rules:
                    value = risk.own_risk if rule.own else risk.risk
                    if value < rule.min_risk or risk.events < rule.min_events:
                        continue
                    if rule.signal and strengths.get(rule.signal, 0.0) < rule.min_strength:
                        continue
                    if rule.max_age is not None:
                        why = _over_allowance(rule, risk)
                        if why is not None:
                            want(account, rule, why)
                        continue
                    reasons = [r for r in risk.reasons
                               if not (rule.own and r.signal == "campaign")]
                    top = "; ".join(r.message for r in reasons[:3])
                    what = "own risk" if rule.own else "risk"
                    want(account, rule, f"{what} {value:.2f} >= {rule.min_risk:.2f}: {top}")
        for campaign in snapshot.campaigns if campaign_rules else ():
            for rule in campaign_rules:
                if campaign.risk >= rule.min_risk and campaign.link >= rule.min_link:
                    why = (f"campaign {campaign.campaign_id} ({len(campaign.members)} "
                           f"accounts) risk {campaign.risk:.2f} >= {rule.min_risk:.2f}, "
                           f"link {campaign.link:.2f}: "
                           + "; ".join(e.message for e in campaign.evidence))
                    for member in campaign.core:
                        want(member, rule, why)
        changed = []
        for account, (rule, why) in wanted.items():
            current = self.current_action(account)
            if current is not None:
                if current.author.startswith("analyst:"):
                    continue
                if SEVERITY[current.kind] >= SEVERITY[rule.action]:
                    continue
            rate_factor, reason = rule.rate_factor, rule.reason or f"rule {rule.name}: {why}"
            if rule.note:
                reason = f"{reason} [{rule.note}]"
            if rule.action == "throttle" and self.relative_throttle and rate_factor:
                rate_factor, note = self._relative_factor(rate_factor,
                                                          snapshot.observed_rpm.get(account))
                reason = f"{reason} [{note}]"
            changed.append(self.set_action(
                account, rule.action, reason=reason, author=rule.author,
                ttl=rule.ttl, rate_factor=rate_factor))
        return changed

    def _relative_factor(self, factor: float, observed_rpm: float | None
                         ) -> tuple[float, str]:
        """The stored rate factor for a rule's ``factor`` and the account's observed rate,
        and a note saying what it means in requests per minute."""
        if observed_rpm is None or observed_rpm >= self.base_rpm:
            return factor, (f"throttled to {factor * self.base_rpm:.2f} requests/min, "
                            f"{factor:g} x the base {self.base_rpm:g}")
        # Floor: the stored factor must stay positive (check_action); 1e-4 of the base
        # rate is a request every few hours, as good as stopped for a harvester.
        effective = max(factor * observed_rpm / self.base_rpm, 1e-4)
        return effective, (f"throttled to {effective * self.base_rpm:.3f} requests/min, "
                           f"{factor:g} x its own observed {observed_rpm:.2f}")

    def close(self) -> None:
        """Release the action store."""
        self.store.close()


def _over_allowance(rule: Rule, risk: AccountRisk) -> str | None:
    """Why a new-account allowance rule (``Rule.max_age``) holds for the account, or None
    (also when its age is unknown: the key store has no key for it)."""
    age, young = risk.age_s, rule.max_age
    if age is None or young is None or age >= young:
        return None
    allowed = rule.allowance_at(age)
    if risk.served_tokens <= allowed:
        return None
    return (f"a new account ({age / 86400:.1f} days old, under {young / 86400:g}) was "
            f"served {risk.served_tokens:,} completion tokens, over its allowance of "
            f"{allowed:,.0f} ({rule.allowance:,.0f} plus {rule.allowance_per_day:,.0f} "
            f"per day of age); own risk {risk.own_risk:.2f}")
