"""Policy rules: which risk and signals lead to which action, read from TOML.

Rules live in the ``[policy]`` section of the file named by the ``policy_file`` setting
(it may be the settings file itself; ``config.py`` skips sub-tables)::

    [[policy.rules]]
    name = "block-harvester"      # the action's author becomes "rule:block-harvester"
    action = "block"              # allow | throttle | challenge | degrade | block
    min_risk = 0.8                # account risk (its campaign's included) at least this
    ttl = "24h"                   # seconds, or a number with s / m / h / d
    # optional:
    scope = "account"             # or "campaign": compare the campaign's risk instead
    own = true                    # account scope: the account's own risk, without the
                                  # campaign risk its core members carry
    min_link = 0.8                # campaign only: how strongly members are linked, at least
    signal = "elicitation"        # and require this signal's strength ...
    min_strength = 0.8            # ... at least this
    min_events = 20               # and at least this many events from the account
    rate_factor = 0.2             # throttle only: requests per minute times this
    reason = "free text"          # shown to analysts; default: the rule and the risk
    max_age = "30d"               # only accounts whose first key is younger than this,
    allowance = 250000            # ... that were served more completion tokens than
    allowance_per_day = 100000    # ... this plus this per day of the account's age

A rule with ``max_age`` is a **new-account allowance**: what an account may take before
it has a history (see ``NEW_ACCOUNT_ALLOWANCE``). It is one more condition beside the
others (``min_risk`` and the rest still apply when set), and needs no risk: an account
with no visible intent that takes answers at volume from its first day looks like a busy
application per request, and what tells them apart is that nobody knows it yet.

Without a policy file, ``DEFAULT_RULES`` apply. When several rules match an account
the most severe action wins (block > challenge > throttle > degrade > allow).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from distillguard.config import SettingsError
from distillguard.detection.signals import ESTABLISHED_S
from distillguard.policy.actions import check_action

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One policy rule (see the module docstring for its fields)."""

    name: str
    action: str
    min_risk: float = 0.0
    ttl: float | None = None
    scope: str = "account"
    signal: str | None = None
    min_strength: float = 0.0
    min_events: int = 0
    rate_factor: float | None = None
    reason: str | None = None
    min_link: float = 0.0
    # How the threshold was set (a calibrated rule quotes its calibration).
    note: str | None = None
    own: bool = False
    max_age: float | None = None
    allowance: float = 0.0
    allowance_per_day: float = 0.0

    @property
    def author(self) -> str:
        """The author of the actions this rule sets (what admission and the audit log
        read them by)."""
        return f"rule:{self.name}"

    def allowance_at(self, age_s: float) -> float:
        """Completion tokens an account of this age may have been served (``max_age``)."""
        return self.allowance + self.allowance_per_day * age_s / 86400.0


# The uncalibrated rules (kept for a package without ``detection/calibration.json``).
# Throttles scale with the account's own rate (``PolicyEngine.relative_throttle``).
# A campaign whose members are tied by several independent kinds of evidence (link
# 0.8 needs at least two of template, infrastructure, client, key burst) and that
# harvests is challenged: the accounts must re-verify.
FIXED_RULES = (
    Rule("block-harvester", "block", min_risk=0.8, ttl=86400.0),
    Rule("challenge-campaign", "challenge", min_risk=0.6, ttl=86400.0, scope="campaign",
         min_link=0.8),
    Rule("throttle-campaign", "throttle", min_risk=0.5, ttl=6 * 3600.0, scope="campaign",
         rate_factor=0.1),
    # Calibrated on quickstart and calib-swarm: a swarm tied by a sign-up burst, one
    # client fingerprint and lockstep timing (link about 0.75) whose pooled harvest is
    # moderate stays under 0.5 risk; no benign group reached link 0.7 there.
    Rule("throttle-linked-campaign", "throttle", min_risk=0.4, ttl=6 * 3600.0,
         scope="campaign", min_link=0.7, rate_factor=0.1),
    Rule("throttle-suspect", "throttle", min_risk=0.6, ttl=3600.0, rate_factor=0.2),
    Rule("degrade-elicitation", "degrade", min_risk=0.4, ttl=6 * 3600.0,
         signal="elicitation", min_strength=0.8),
)

# The new-account allowance in the defaults: an account younger than 30 days (when
# ``detection.campaigns`` counts one as established) that has been served more than
# 250k completion tokens plus 100k per day of its age is throttled to a tenth of its own
# rate for a day, and again while it stays young and over. About what a usage tier gives
# a new customer: a person asking all evening takes some 10-50k tokens a day; an
# application that needs millions on its first day is one an analyst allows by hand
# (an analyst's ``allow`` exempts the account from every rule). The adaptive attacker
# found new accounts taking plain answers at 15 a minute, 1.6M tokens each in 6 h with
# no visible intent, scored like a busy retrieval app.
NEW_ACCOUNT_ALLOWANCE = Rule(
    "new-account-allowance", "throttle", ttl=86400.0, rate_factor=0.1,
    max_age=ESTABLISHED_S, allowance=250_000.0, allowance_per_day=100_000.0,
    note="new accounts: 250k completion tokens plus 100k per day of age, until 30 days old")


def calibrated_rules(calibration: dict[str, Any] | None, *,
                     embeddings: bool = True) -> tuple[Rule, ...]:
    """The default rules with thresholds from ``calibration`` (``detection.calibration``):
    a confirmed harvester is refused, and so is every core member of a linked campaign
    that harvests (sign-up-linked accounts and new members included, since campaigns
    are found again on every detection round). Degrade and throttle let a harvest go
    on, so the defaults refuse. ``FIXED_RULES`` without a calibration.

    Embedding signals raise some benign scores, so a calibration made with embeddings
    carries the thresholds for detection without them apart
    (``without_embeddings``); ``embeddings`` picks the one that matches."""
    if not calibration:
        return FIXED_RULES + (NEW_ACCOUNT_ALLOWANCE,)
    if not embeddings and calibration.get("embeddings") and \
            calibration.get("without_embeddings"):
        calibration = calibration["without_embeddings"]
    rules = calibration["rules"]
    note = calibration.get("note", "calibration split")
    acct = rules["block-harvester"]
    camp = rules["block-campaign"]
    return (
        # Its own risk, as the calibration measured it: a core member's risk also
        # carries its campaign's, which block-campaign is calibrated for (the linked
        # retrieval apps score 0.27 as a group, above this threshold).
        Rule("block-harvester", "block", min_risk=acct["min_risk"], ttl=7 * 86400.0,
             own=True,
             note=f"threshold {acct['min_risk']:.2f} on the account's own risk from benign "
                  f"scores ({note}; highest benign {acct['benign_max']:.2f})"),
        Rule("block-campaign", "block", min_risk=camp["min_risk"], ttl=7 * 86400.0,
             scope="campaign", min_link=0.6,
             note=f"threshold {camp['min_risk']:.2f} above every benign account and "
                  f"benign group ({note})"),
        NEW_ACCOUNT_ALLOWANCE,
    )


def _default_rules(embeddings: bool = True) -> tuple[Rule, ...]:
    from distillguard.detection.calibration import load_calibration

    return calibrated_rules(load_calibration(), embeddings=embeddings)


DEFAULT_RULES = _default_rules()
# The defaults for detection without embeddings (``detection_embeddings = false``).
DEFAULT_RULES_WITHOUT_EMBEDDINGS = _default_rules(embeddings=False)


def parse_duration(value: Any, where: str, field: str = "ttl") -> float | None:
    """Seconds from a number or a string like ``90s``, ``15m``, ``6h``, ``7d``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise SettingsError(f"{where}: {field} must be seconds or like '15m', '6h', "
                                f"'7d', got {value!r}")
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise SettingsError(f"{where}: {field} must be positive, got {value!r}")
    return seconds


def parse_rules(section: Any, source: str) -> list[Rule]:
    """Rules from a ``[policy]`` table; SettingsError names the bad rule and field."""
    if not isinstance(section, dict):
        raise SettingsError(f"{source}: [policy] must be a table")
    unknown = set(section) - {"rules"}
    if unknown:
        raise SettingsError(f"{source}: unknown key(s) in [policy]: {', '.join(sorted(unknown))}")
    raw = section.get("rules", [])
    if not isinstance(raw, list):
        raise SettingsError(f"{source}: policy.rules must be an array of tables")
    fields = {f.name for f in dataclasses.fields(Rule)}
    rules = []
    for i, item in enumerate(raw):
        where = f"{source}: policy.rules[{i}]"
        if not isinstance(item, dict):
            raise SettingsError(f"{where} must be a table")
        extra = set(item) - fields
        if extra:
            raise SettingsError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise SettingsError(f"{where}: 'name' must be a non-empty string")
        where = f"{source}: rule {item['name']!r}"
        try:
            rule = Rule(
                name=item["name"], action=str(item.get("action", "")),
                min_risk=float(item.get("min_risk", 0.0)),
                ttl=parse_duration(item.get("ttl"), where),
                scope=str(item.get("scope", "account")),
                signal=item.get("signal"),
                min_strength=float(item.get("min_strength", 0.0)),
                min_events=int(item.get("min_events", 0)),
                rate_factor=(float(item["rate_factor"]) if "rate_factor" in item else None),
                reason=item.get("reason"), min_link=float(item.get("min_link", 0.0)),
                note=item.get("note"), own=item.get("own", False),
                max_age=parse_duration(item.get("max_age"), where, "max_age"),
                allowance=float(item.get("allowance", 0.0)),
                allowance_per_day=float(item.get("allowance_per_day", 0.0)))
            check_action(rule.action, rule.rate_factor)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{where}: {exc}") from None
        if rule.scope not in ("account", "campaign"):
            raise SettingsError(f"{where}: scope must be 'account' or 'campaign'")
        if not 0.0 <= rule.min_risk <= 1.0:
            raise SettingsError(f"{where}: min_risk must lie in [0, 1]")
        if not 0.0 <= rule.min_link <= 1.0:
            raise SettingsError(f"{where}: min_link must lie in [0, 1]")
        if rule.min_link and rule.scope != "campaign":
            raise SettingsError(f"{where}: min_link applies only to scope = 'campaign'")
        if not isinstance(rule.own, bool):
            raise SettingsError(f"{where}: own must be true or false")
        if rule.own and rule.scope != "account":
            raise SettingsError(f"{where}: own applies only to scope = 'account'")
        if rule.max_age is None and (rule.allowance or rule.allowance_per_day):
            raise SettingsError(f"{where}: allowance and allowance_per_day need max_age")
        if rule.max_age is not None and rule.scope != "account":
            raise SettingsError(f"{where}: max_age applies only to scope = 'account'")
        if rule.allowance < 0 or rule.allowance_per_day < 0:
            raise SettingsError(f"{where}: allowance and allowance_per_day must be >= 0")
        if rule.signal is not None:
            from distillguard.detection.signals import signal_names

            if rule.signal not in signal_names():
                raise SettingsError(f"{where}: no signal named {rule.signal!r}; known: "
                                    f"{', '.join(signal_names())}")
        rules.append(rule)
    return rules


def load_rules(policy_file: str | Path | None, *, embeddings: bool = True) -> list[Rule]:
    """The rules of ``policy_file``'s [policy] section; without a file or when the file
    has no [policy] section, ``DEFAULT_RULES`` (``DEFAULT_RULES_WITHOUT_EMBEDDINGS`` when
    detection runs without embeddings)."""
    defaults = DEFAULT_RULES if embeddings else DEFAULT_RULES_WITHOUT_EMBEDDINGS
    if not policy_file:
        return list(defaults)
    path = Path(policy_file)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read policy file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"policy file {path} is not valid TOML: {exc}") from None
    section = data.get("policy")
    if section is None and isinstance(data.get("distillguard"), dict):
        section = data["distillguard"].get("policy")
    if section is None:
        return list(defaults)
    return parse_rules(section, str(path))
