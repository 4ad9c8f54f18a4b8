"""Replay mode: the production admission and event building, no HTTP, simulated time.

No sockets and no backend: each simulated request goes through the same functions the
gateway's middleware and routes call (``gateway.admission.admit``, ``gateway.schema``'s
parsing and recorded parameters, ``RequestContext.event``), on a ``ManualClock`` set to
the request's time, so a refused request carries exactly the status and error code the
gateway would give it. Detection rounds are ``run_round``, the function
every production round runs.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
from collections.abc import Sequence

from distillguard.clock import ManualClock
from distillguard.config import Settings
from distillguard.detection.driver import run_round
from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.detection.space import FEATURES_KEY
from distillguard.gateway import admission, errors, schema
from distillguard.gateway.context import RequestContext
from distillguard.gateway.schema import Limits
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


class MemoryActionStore:
    """An ``ActionStore`` in memory: replay needs no database between rounds."""

    name = "memory"

    def __init__(self, clock: ManualClock) -> None:
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


def event_for(req: SimRequest, policy: PolicyEngine, settings: Settings) -> RequestEvent:
    """Admit ``req`` as the gateway would and return the event it records for it.

    The policy's clock must read ``req.ts``. A served request is answered by the
    simulated backend: ``completion_tokens`` words after 0.3 s, at 40 tokens/s.
    """
    return event_and_prompt(req, policy, settings)[0]


def event_and_prompt(req: SimRequest, policy: PolicyEngine, settings: Settings
                   ) -> tuple[RequestEvent, str]:
    """``event_for`` and, when the event is kept without prompt text (a served request
    with ``retain_prompts`` off), the prompt the gateway derives its prompt features
    from (``gateway.prompt_features``; "" otherwise)."""
    ctx = RequestContext("/v1/chat/completions", req.addr, req.agent, ts=req.ts)
    ctx.account, ctx.key_id = req.account, f"key_{req.account}"
    try:
        admission.admit(policy, ctx)
        body = req.body()
        ctx.params = schema.recorded_params(body)
        ctx.model = req.model
        gen = schema.parse_chat(body, Limits(settings.max_tokens_limit,
                                             settings.default_max_tokens, settings.max_n))
        ctx.prompt = schema.prompt_text(gen)
        ctx.features = request_features(gen.messages, gen.prompt, body)
    except errors.APIError as exc:
        ctx.fail(exc)
        return dataclasses.replace(ctx.event(retain_prompts=settings.retain_prompts),
                                   latency_ms=1.0), ""
    ctx.status = 200
    ctx.prompt_tokens = sum(len(c.split()) for _, c in req.messages)
    ctx.completion_tokens = completion_tokens(req, settings)
    event = ctx.event(retain_prompts=settings.retain_prompts)
    prompt = "" if settings.retain_prompts else ctx.prompt
    return dataclasses.replace(event, latency_ms=300.0 + ctx.completion_tokens * 25.0), prompt


def completion_tokens(req: SimRequest, settings: Settings) -> int:
    """What the simulated backend answers ``req`` with (all ``n`` choices)."""
    cap = min(int(req.params.get("max_tokens") or settings.default_max_tokens
                  or DEFAULT_MAX_TOKENS), settings.max_tokens_limit)
    return answer_tokens(req.last_user(), cap) * int(req.params.get("n") or 1)


class ReplayRun:
    """One scenario run in replay mode; ``run()`` returns the ``Recorder``."""

    def __init__(self, traffic: Traffic, *, embeddings: bool | None = False,
                 base_settings: Settings | None = None, data_dir: str | None = None,
                 progress: bool = True, embedding_cache: str | None = None,
                 retain_prompts: bool = True) -> None:
        self.traffic = traffic
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="dg-sim-")
        folder = data_dir or self._tmp.name
        scenario = traffic.scenario
        self.settings = run_settings(scenario, folder, embeddings=embeddings,
                                     base=base_settings,
                                     policy_file=write_policy_file(scenario, folder))
        if not retain_prompts:
            # Events without text: the gateway's derived prompt features stand in.
            self.settings = self.settings.replace(retain_prompts=False)
        self.clock = ManualClock(traffic.world.start)
        self.pipeline = DetectionPipeline.from_settings(self.settings,
                                                        store=KeyTimes(traffic.accounts))
        self.pipeline.clock = self.clock
        # A warm start from embeddings saved by ``CachedEmbedder.save`` (repeated runs).
        if embedding_cache and hasattr(self.pipeline.embedder, "load"):
            self.pipeline.embedder.load(embedding_cache)
        base_rpm = float(self.settings.rate_limit_rpm or self.settings.policy_throttle_rpm)
        self.policy = PolicyEngine(MemoryActionStore(self.clock),
                                   load_rules(self.settings.policy_file,
                                              embeddings=self.pipeline.embedder is not None),
                                   base_rpm=base_rpm,
                                   relative_throttle=self.settings.policy_throttle_relative,
                                   clock=self.clock)
        self.recorder = Recorder(traffic)
        self.progress = progress

    def _slice(self, reqs: Sequence[SimRequest]) -> list[RequestEvent]:
        events = []
        derive: list[tuple[int, str]] = []
        space = self.pipeline.space
        for req in reqs:
            self.clock.set(req.ts)
            event, prompt = event_and_prompt(req, self.policy, self.settings)
            self.recorder.outcome(req, event.status, event.completion_tokens)
            text = space.to_derive(prompt, event.features) if prompt and space else ""
            if text:
                derive.append((len(events), text))
            events.append(event)
        if derive:
            # As the gateway's prompt-feature queue does, in one batch per slice.
            for (i, _), pe in zip(derive, space.derive([t for _, t in derive])):
                events[i].features = {**(events[i].features or {}), FEATURES_KEY: pe}
        return events

    def run(self) -> Recorder:
        """Run every slice, one detection round after each; returns the recorder."""
        traffic, rec = self.traffic, self.recorder
        progress = Progress(len(traffic.requests), traffic.scenario.duration) \
            if self.progress else None
        done = 0
        n_actions = 0
        for tick, reqs in traffic.slices():
            events = self._slice(reqs)
            done += len(reqs)
            if events:
                # Replay is its own log: the events go to detection as written.
                self.pipeline.observe_many(events)
            self.clock.set(tick)
            _, actions = run_round(self.pipeline, self.policy, self.clock)
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
