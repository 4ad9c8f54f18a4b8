"""What replay and live mode share: the traffic, the detection rhythm, the recording.

A run generates every population's requests, sorts them by simulated time and cuts them
into slices of ``detection_interval``. Each slice's requests go through admission (the
account's action in force) and, when admitted, get a response; at the slice's end
detection observes the slice's events and runs one round (refresh + policy rules), as
the gateway's periodic job does. ``Recorder`` keeps what the metrics need, in memory
bounded by accounts (not requests).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distillguard.config import Settings
from distillguard.simulate.populations import Population, World
from distillguard.simulate.scenario import Scenario
from distillguard.simulate.traffic import AccountSpec, SimRequest
from distillguard.telemetry.keys import KeyRecord

# Actions that limit how many responses an account gets (degrade still answers).
STOPPING = ("throttle", "challenge", "block")
# Points kept on each campaign's timeline (detection rounds are sampled to this many).
TIMELINE_POINTS = 120


@dataclasses.dataclass
class Traffic:
    """A scenario's generated traffic: accounts with ground truth and sorted requests."""

    scenario: Scenario
    world: World
    populations: list[Population]
    accounts: list[AccountSpec]
    requests: list[SimRequest]

    @classmethod
    def generate(cls, scenario: Scenario, scale: float = 1.0) -> Traffic:
        world, pops = scenario.build(scale)
        accounts = [a for p in pops for a in p.accounts()]
        requests = [r for p in pops for r in p.requests() if world.start <= r.ts < world.end]
        requests.sort(key=lambda r: (r.ts, r.account))
        return cls(scenario, world, pops, accounts, requests)

    def targets(self) -> dict[str, int]:
        """Campaign name -> responses it wants."""
        return {p.name: p.target for p in self.populations if p.target is not None}

    def slices(self) -> Iterator[tuple[float, Sequence[SimRequest]]]:
        """(end of the detection interval, the requests that arrive within it)."""
        interval = self.scenario.detection_interval
        reqs, i, n = self.requests, 0, len(self.requests)
        tick = self.world.start + interval
        while tick < self.world.end + interval:
            j = i
            while j < n and reqs[j].ts < tick:
                j += 1
            yield tick, reqs[i:j]
            i = j
            tick += interval


def run_settings(scenario: Scenario, data_dir: str, *, embeddings: bool | None,
                 base: Settings | None = None, policy_file: str = "") -> Settings:
    """Settings for a run: the scenario's [settings] over ``base`` (or defaults), state in
    ``data_dir``, the echo-style simulated backend, client addresses from
    X-Forwarded-For (the simulator sends them), prompts retained."""
    from distillguard.config import SettingsError
    from distillguard.simulate.populations import ScenarioError

    values = dict(base.values) if base is not None else None
    settings = Settings(values) if values is not None else Settings.load(env={})
    try:
        settings = settings.replace(**scenario.settings)
    except SettingsError as exc:
        raise ScenarioError(f"{scenario.source}: [settings]: {exc}") from None
    changes: dict[str, Any] = {"data_dir": data_dir, "trust_forwarded_for": True,
                               "retain_prompts": True, "detection": True,
                               "rate_limit_rpm": 0, "rate_limit_tpm": 0,
                               # A scenario's own rules win; else the user's policy file.
                               "policy_file": policy_file or settings.policy_file}
    if embeddings is not None:
        changes["detection_embeddings"] = embeddings
    return settings.replace(**changes)


def write_policy_file(scenario: Scenario, folder: str) -> str:
    """The scenario's [policy] as a file for the ``policy_file`` setting ("" if none)."""
    if scenario.policy is None:
        return ""
    import json
    from pathlib import Path

    lines = ["[policy]"]
    for rule in scenario.policy.get("rules", []):
        lines.append("[[policy.rules]]")
        # JSON scalars are valid TOML scalars for the strings and numbers rules hold.
        lines += [f"{k} = {json.dumps(v)}" for k, v in rule.items()]
    path = Path(folder) / "scenario-policy.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class KeyTimes:
    """Stands in for the store's ``list_keys`` in replay: the simulated key times."""

    def __init__(self, accounts: Sequence[AccountSpec]) -> None:
        self.records = [KeyRecord(f"key_{a.name}", a.name, "sk-dg-sim", a.key_created_at)
                        for a in accounts]

    def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        return [r for r in self.records if account is None or r.account == account]


@dataclasses.dataclass
class _Acct:
    served: int = 0
    tokens: int = 0
    refused: int = 0
    blocked: int = 0  # refused by block / challenge (403)
    throttled: int = 0  # refused by throttle (429)
    served_before: int = 0  # before the account's first action
    tokens_before: int = 0
    first_action: float | None = None
    first_kind: str | None = None
    worst_kind: str | None = None
    actions: int = 0
    first_request: float | None = None


@dataclasses.dataclass
class _Camp:
    served: int = 0
    tokens: int = 0
    refused: int = 0
    served_before: int = 0
    tokens_before: int = 0
    first_request: float | None = None
    first_action: float | None = None
    # First action that limits responses (throttle, challenge, block; not degrade).
    first_stop: float | None = None
    served_before_stop: int = 0
    tokens_before_stop: int = 0
    members_acted: int = 0
    timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Recorder:
    """Outcomes of requests and actions, per account and per campaign."""

    def __init__(self, traffic: Traffic) -> None:
        from distillguard.policy.actions import SEVERITY

        self.severity = SEVERITY
        self.traffic = traffic
        self.spec = {a.name: a for a in traffic.accounts}
        self.acct = {a.name: _Acct() for a in traffic.accounts}
        self.camp = {c: _Camp() for c in traffic.targets()}
        self.members: dict[str, list[str]] = {c: [] for c in self.camp}
        for a in traffic.accounts:
            if a.campaign is not None:
                self.members[a.campaign].append(a.name)
        self.benign_requests = 0
        self.benign_refused = {"throttle": 0, "block": 0}
        self.action_log: list[dict[str, Any]] = []
        self.events = 0
        self.rounds = 0
        n_rounds = max(1, int(traffic.scenario.duration / traffic.scenario.detection_interval))
        self._sample_every = max(1, n_rounds // TIMELINE_POINTS)

    def outcome(self, req: SimRequest, status: int, tokens: int) -> None:
        """One request's result: 200 served (``tokens`` completion tokens), 403 or 429."""
        self.events += 1
        a = self.acct[req.account]
        spec = self.spec[req.account]
        # Min, not first seen: live mode records outcomes in completion order.
        if a.first_request is None or req.ts < a.first_request:
            a.first_request = req.ts
        camp = self.camp.get(spec.campaign) if spec.campaign else None
        if camp is not None and (camp.first_request is None or req.ts < camp.first_request):
            camp.first_request = req.ts
        if status == 200:
            a.served += 1
            a.tokens += tokens
            if a.first_action is None:
                a.served_before += 1
                a.tokens_before += tokens
            if camp is not None:
                camp.served += 1
                camp.tokens += tokens
                if camp.first_action is None:
                    camp.served_before += 1
                    camp.tokens_before += tokens
                if camp.first_stop is None:
                    camp.served_before_stop += 1
                    camp.tokens_before_stop += tokens
        else:
            a.refused += 1
            if status == 429:
                a.throttled += 1
            else:
                a.blocked += 1
            if camp is not None:
                camp.refused += 1
        if spec.label != "attack":
            self.benign_requests += 1
            if status == 429:
                self.benign_refused["throttle"] += 1
            elif status != 200:
                self.benign_refused["block"] += 1

    def actions(self, t: float, actions: Sequence[Any]) -> None:
        """Actions a detection round at simulated time ``t`` set."""
        for action in actions:
            if action.kind == "allow" or action.account not in self.acct:
                continue
            a = self.acct[action.account]
            spec = self.spec[action.account]
            a.actions += 1
            if a.first_action is None:
                a.first_action, a.first_kind = t, action.kind
                if spec.campaign in self.camp:
                    self.camp[spec.campaign].members_acted += 1
            if a.worst_kind is None or self.severity[action.kind] > self.severity[a.worst_kind]:
                a.worst_kind = action.kind
            camp = self.camp.get(spec.campaign) if spec.campaign else None
            if camp is not None and camp.first_action is None:
                camp.first_action = t
            if camp is not None and camp.first_stop is None and action.kind in STOPPING:
                camp.first_stop = t
            self.action_log.append({"t": t, "account": action.account, "kind": action.kind,
                                    "author": action.author, "label": spec.label,
                                    "group": spec.group})

    def round(self, t: float, risk_of: Callable[[str], float], last: bool = False) -> None:
        """After each detection round: sample the campaign timelines."""
        self.rounds += 1
        if not last and self.rounds % self._sample_every:
            return
        for name, camp in self.camp.items():
            members = self.members[name]
            risks = [risk_of(m) for m in members]
            camp.timeline.append({
                "t": t, "served": camp.served, "refused": camp.refused,
                "members_acted": camp.members_acted,
                "max_risk": max(risks, default=0.0),
                "mean_risk": sum(risks) / len(risks) if risks else 0.0})


class Progress:
    """Progress on stderr, at most every ``every`` seconds of wall time."""

    def __init__(self, total_events: int, span: float, every: float = 2.0,
                 stream: Any = None) -> None:
        self.total, self.span, self.every = total_events, span, every
        self.stream = stream if stream is not None else sys.stderr
        self.started = self._last = time.perf_counter()

    def update(self, done_events: int, sim_elapsed: float, actions: int,
               force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        took = max(now - self.started, 1e-9)
        print(f"  simulated {sim_elapsed / 86400:5.2f}/{self.span / 86400:.2f} days, "
              f"{done_events:,}/{self.total:,} requests, {actions} actions, "
              f"{done_events / took:,.0f} requests/s", file=self.stream, flush=True)
