"""Replay mode: events straight into ``DetectionPipeline`` + ``PolicyEngine``, simulated clock.

No HTTP, no backend: each request becomes the ``RequestEvent`` the gateway would have
recorded. Admission follows the gateway's ``Admission`` middleware: an account under
``block`` or ``challenge`` gets 403 and no response; under ``throttle``
``PolicyEngine.admit``'s token bucket admits or refuses with 429, timed on the simulated
clock the engine is given; ``degrade`` and ``allow`` are served. Refused requests still leave an
event (status 403/429, no tokens), as in the gateway.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence

from distillguard.config import Settings
from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.gateway import errors
from distillguard.policy.actions import Action
from distillguard.policy.engine import PolicyEngine
from distillguard.policy.rules import load_rules
from distillguard.policy.store import AuditEntry
from distillguard.simulate.runner import (
    KeyTimes,
    Progress,
    Recorder,
    Traffic,
    run_settings,
    write_policy_file,
)
from distillguard.simulate.traffic import DEFAULT_MAX_TOKENS, SimRequest, answer_tokens
from distillguard.telemetry.events import RequestEvent


class SimClock:
    """The simulated time, set by the run."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryActionStore:
    """An ``ActionStore`` in memory: replay needs no database between rounds."""

    name = "memory"

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._actions: dict[str, Action] = {}
        self._audit: list[AuditEntry] = []
        self._version = 0
        self._lock = threading.Lock()

    def _log(self, account: str, op: str, action: Action | None, reason: str,
             author: str) -> None:
        self._audit.append(AuditEntry(len(self._audit) + 1, self.clock(), account, op,
                                      action.kind if action else None, reason, author,
                                      action.expires_at if action else None,
                                      action.rate_factor if action else None))
        self._version += 1

    def set_action(self, action: Action) -> None:
        with self._lock:
            self._actions[action.account] = action
            self._log(action.account, "set", action, action.reason, action.author)

    def lift(self, account: str, *, author: str, reason: str) -> Action | None:
        with self._lock:
            action = self._actions.pop(account, None)
            if action is not None:
                self._log(account, "lift", action, reason, author)
            return action

    def get(self, account: str) -> Action | None:
        return self._actions.get(account)

    def actions(self) -> list[Action]:
        return list(self._actions.values())

    def audit(self, *, account: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = [e for e in reversed(self._audit) if account is None or e.account == account]
        return rows[:limit]

    def version(self) -> int:
        return self._version

    def close(self) -> None:
        """Nothing to release."""


def event_for(req: SimRequest, status: int, tokens: int, seq: int,
              settings: Settings) -> RequestEvent:
    """The ``RequestEvent`` the gateway records for ``req`` answered with ``status``."""
    prompt_tokens = sum(len(c.split()) for _, c in req.messages)
    error_type = error_code = None
    if status == 403:
        error_type, error_code = errors.PermissionDenied.type, "account_blocked"
    elif status == 429:
        error_type, error_code = errors.RateLimited.type, errors.RateLimited.code
    # Simulated generation speed: 40 tokens/s after 0.3 s to the first token.
    latency = 300.0 + tokens * 25.0 if status == 200 else 1.0
    return RequestEvent(
        ts=req.ts, request_id=f"sim{seq:010x}", endpoint="/v1/chat/completions",
        status=status, latency_ms=latency, account=req.account, key_id=f"key_{req.account}",
        client_addr=req.addr, user_agent=req.agent, model=req.model,
        params=req.recorded_params(), prompt=req.prompt_text(),
        prompt_tokens=prompt_tokens if status == 200 else 0, completion_tokens=tokens,
        error_type=error_type, error_code=error_code,
        features=request_features([{"role": r, "content": c} for r, c in req.messages],
                                  None, req.params))


def completion_tokens(req: SimRequest, settings: Settings) -> int:
    """What the simulated backend answers ``req`` with (all ``n`` choices)."""
    cap = min(int(req.params.get("max_tokens") or settings.default_max_tokens
                  or DEFAULT_MAX_TOKENS), settings.max_tokens_limit)
    return answer_tokens(req.last_user(), cap) * int(req.params.get("n") or 1)


class ReplayRun:
    """One scenario run in replay mode; ``run()`` returns the ``Recorder``."""

    def __init__(self, traffic: Traffic, *, embeddings: bool | None = False,
                 base_settings: Settings | None = None, data_dir: str | None = None,
                 progress: bool = True) -> None:
        self.traffic = traffic
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="dg-sim-")
        folder = data_dir or self._tmp.name
        scenario = traffic.scenario
        self.settings = run_settings(scenario, folder, embeddings=embeddings,
                                     base=base_settings,
                                     policy_file=write_policy_file(scenario, folder))
        self.clock = SimClock(traffic.world.start)
        self.pipeline = DetectionPipeline.from_settings(self.settings,
                                                        store=KeyTimes(traffic.accounts))
        self.pipeline.clock = self.clock
        base_rpm = float(self.settings.rate_limit_rpm or self.settings.policy_throttle_rpm)
        self.policy = PolicyEngine(MemoryActionStore(self.clock),
                                   load_rules(self.settings.policy_file), base_rpm=base_rpm,
                                   relative_throttle=self.settings.policy_throttle_relative,
                                   clock=self.clock)
        self.recorder = Recorder(traffic)
        self.progress = progress

    def _admit(self, req: SimRequest) -> int:
        # The gateway's own admission rule, on the simulated clock (set to req.ts).
        decision = self.policy.admit(req.account)
        if decision.allowed:
            return 200
        return 429 if decision.action is not None and decision.action.kind == "throttle" \
            else 403

    def _slice(self, reqs: Sequence[SimRequest], seq: int) -> list[RequestEvent]:
        events = []
        settings = self.settings
        for req in reqs:
            self.clock.now = req.ts
            status = self._admit(req)
            tokens = completion_tokens(req, settings) if status == 200 else 0
            self.recorder.outcome(req, status, tokens)
            events.append(event_for(req, status, tokens, seq + len(events), settings))
        return events

    def run(self) -> Recorder:
        """Run every slice, one detection round after each; returns the recorder."""
        traffic, rec = self.traffic, self.recorder
        progress = Progress(len(traffic.requests), traffic.scenario.duration) \
            if self.progress else None
        done = 0
        n_actions = 0
        for tick, reqs in traffic.slices():
            events = self._slice(reqs, done)
            done += len(reqs)
            if events:
                self.pipeline.observe_many(events)
            self.clock.now = tick
            self.pipeline.refresh()
            actions = self.policy.evaluate(self.pipeline)
            n_actions += len(actions)
            rec.actions(tick, actions)
            last = tick >= traffic.world.end
            rec.round(tick, lambda a: self.pipeline.account_risk(a).risk, last=last)
            if progress is not None:
                progress.update(done, tick - traffic.world.start, n_actions, force=last)
        return rec

    def risks(self) -> dict[str, float]:
        """Every account's risk after the run."""
        return {a.name: self.pipeline.account_risk(a.name).risk for a in self.traffic.accounts}

    def close(self) -> None:
        self.policy.close()
        if self._tmp is not None:
            self._tmp.cleanup()
