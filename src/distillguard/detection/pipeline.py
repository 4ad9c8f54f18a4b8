"""``DetectionPipeline``: events in, per-account risk with reasons and campaigns out.

``observe`` updates each account's signal states (bounded memory per account) and its
campaign profile; it never reads the store. ``refresh`` (the periodic job) recomputes
the population baselines and the campaigns; ``account_risk`` is cheap and reads what
the last refresh left, so call ``refresh`` every ``detection_interval`` seconds.

Scoring. Each signal's strength in [0, 1] counts within its group by noisy-OR of
``weight * strength``. Harvesting is taking value at scale, so::

    harvest = intent * (0.5 + 0.5 * max(automation, volume))
    risk    = max(harvest * min(1, events / detection_min_events), campaign risk)
            (campaign risk only for its core members, tied by two kinds of evidence)

Automation or volume alone (an evaluation harness, a busy RAG app) never makes risk:
it only multiplies what the account extracts.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from distillguard.detection.campaigns import Campaign, Profile, find_campaigns
from distillguard.detection.signals import (
    GROUPS,
    Baseline,
    EventFeatures,
    Signal,
    create_signal,
    signal_names,
)
from distillguard.detection.text import assistant_turns, last_user_turn, template_features

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.embedder import Embedder
    from distillguard.telemetry.events import RequestEvent

_EMBED_CHARS = 1000
_INFO_CACHE = 50_000
# A rate over less than this says more about one burst than about the account.
OBSERVED_MIN_SPAN_S = 600.0


@dataclasses.dataclass(frozen=True)
class Reason:
    """Why an account is risky: one signal, its value, and the baseline it was held to."""

    signal: str
    group: str
    value: float
    strength: float
    baseline_median: float | None
    message: str


@dataclasses.dataclass(frozen=True)
class AccountRisk:
    """An account's risk in [0, 1] with its reasons, strongest first.

    ``own_risk`` is from the account's own signals; ``campaign`` names the campaign
    whose risk lifted it, if any. ``groups`` holds the intent / automation / volume
    scores that ``own_risk`` combines.
    """

    account: str
    risk: float
    own_risk: float
    events: int
    reasons: list[Reason]
    groups: dict[str, float]
    campaign: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SignalReading:
    """One signal of one account as an analyst sees it (value None: too little data)."""

    signal: str
    group: str
    description: str
    value: float | None
    strength: float
    baseline: Baseline | None
    message: str | None


class _Account:
    __slots__ = ("events", "first_seen", "last_seen", "states", "profile")

    def __init__(self, signals: Sequence[Signal]) -> None:
        self.events = 0
        self.first_seen = -1.0
        self.last_seen = 0.0
        self.states = [s.new_state() for s in signals]
        self.profile = Profile()


def _params_key(params: dict[str, Any]) -> int:
    items = sorted((k, repr(v)) for k, v in params.items() if k not in ("user", "stream"))
    return zlib.crc32(repr(items).encode())


def _noisy_or(parts: Iterable[float]) -> float:
    keep = 1.0
    for p in parts:
        keep *= 1.0 - min(max(p, 0.0), 1.0)
    return 1.0 - keep


class DetectionPipeline:
    """Per-account signals, risk with reasons, and campaigns; safe across threads.

    ``embedder`` (optional) enables the coverage signal and the embedding half of the
    elicitation judge; ``topic_map`` (unit centroids, k x d) defaults to the shipped map
    when an embedder is given. ``store`` (optional) lets campaigns read key creation
    times. ``clock`` is for tests.
    """

    def __init__(self, settings: Settings | None = None, *,
                 signals: Sequence[str] | None = None, embedder: Embedder | None = None,
                 topic_map: np.ndarray | None = None, store: Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        from distillguard.detection.elicitation import Elicitation

        self.settings = settings
        self.min_events = settings.detection_min_events if settings is not None else 20
        self.baseline_min_events = (settings.detection_baseline_min_events
                                    if settings is not None else 3)
        self.max_accounts = settings.detection_max_accounts if settings is not None else 100_000
        self.signals: list[Signal] = [create_signal(n, settings)
                                      for n in (signals or signal_names())]
        self.embedder = embedder
        if embedder is not None and topic_map is None:
            from distillguard.detection.topics import load_topic_map

            topic_map = load_topic_map()
        self.topic_map = topic_map
        n_topics = len(topic_map) if topic_map is not None else 0
        for s in self.signals:
            if s.name == "coverage":
                s.n_topics = n_topics  # type: ignore[attr-defined]
        self.elicitation = Elicitation(embedder)
        self.store = store
        self.clock = clock
        self._lock = threading.RLock()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        self._baselines: dict[str, Baseline] = {}
        self._campaigns: list[Campaign] = []
        self._campaign_of: dict[str, Campaign] = {}
        # digest of the prompt -> (topic, elicits, embedding); repeated prompts pay once.
        self._info: OrderedDict[int, tuple[int, bool, np.ndarray | None]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, *, store: Any = None) -> DetectionPipeline:
        """The pipeline the settings describe (MiniLM embeddings when enabled)."""
        embedder = None
        if settings.detection_embeddings:
            from distillguard.detection.embedder import CachedEmbedder, MiniLMEmbedder

            embedder = CachedEmbedder(MiniLMEmbedder(),
                                      max_entries=settings.detection_embedding_cache)
        return cls(settings, embedder=embedder, store=store)

    # --- observing ---------------------------------------------------------------------
    def _prompt_info(self, text: str, embedding: np.ndarray | None = None
                     ) -> tuple[int, bool, np.ndarray | None]:
        key = hash(text)
        info = self._info.get(key)
        if info is not None:
            return info
        if embedding is None and self.embedder is not None and text:
            embedding = self.embedder.embed([text])[0]
        topic = -1
        if embedding is not None and self.topic_map is not None:
            topic = int(np.argmax(self.topic_map @ embedding))
        info = (topic, self.elicitation.elicits(text, embedding), embedding)
        self._info[key] = info
        if len(self._info) > _INFO_CACHE:
            self._info.popitem(last=False)
        return info

    def _features(self, event: RequestEvent, embedding: np.ndarray | None = None
                  ) -> EventFeatures:
        params = event.params or {}
        prompt = event.prompt or ""
        turn = last_user_turn(prompt) if prompt else ""
        text = turn[:_EMBED_CHARS]
        topic, elicits, emb = self._prompt_info(text, embedding) if text else (-1, False, None)
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        n = params.get("n") or 1
        bands, wrappers = template_features(turn) if turn else ((), ())
        return EventFeatures(
            event=event, ts=event.ts, end_ts=event.ts + event.latency_ms / 1000.0,
            ok=event.status == 200, params_key=_params_key(params),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            n=n if isinstance(n, int) else 1,
            logprobs=bool(params.get("logprobs") or params.get("top_logprobs")),
            assistant_turns=assistant_turns(prompt) if prompt else 0,
            bands=bands, topic=topic, embedding=emb, elicits=elicits, wrappers=wrappers)

    def observe(self, event: RequestEvent) -> None:
        """Update the event's account with one event (unauthenticated events are skipped)."""
        if event.account is None:
            return
        features = self._features(event)
        with self._lock:
            self._apply(event.account, features)

    def observe_many(self, events: Sequence[RequestEvent]) -> None:
        """``observe`` for a batch, embedding its new prompts in one call (run it in a thread)."""
        if self.embedder is not None:
            texts = []
            for e in events:
                if e.account is not None and e.prompt:
                    t = last_user_turn(e.prompt)[:_EMBED_CHARS]
                    if hash(t) not in self._info:
                        texts.append(t)
            if texts:
                texts = list(dict.fromkeys(texts))
                vectors = self.embedder.embed(texts)
                for t, v in zip(texts, vectors):
                    self._prompt_info(t, v)
        for e in events:
            self.observe(e)

    def _apply(self, account: str, f: EventFeatures) -> None:
        acct = self._accounts.get(account)
        if acct is None:
            acct = self._accounts[account] = _Account(self.signals)
            if len(self._accounts) > self.max_accounts:
                self._accounts.popitem(last=False)
        else:
            self._accounts.move_to_end(account)
        acct.events += 1
        if acct.first_seen < 0:
            acct.first_seen = f.ts
        acct.last_seen = f.ts
        for signal, state in zip(self.signals, acct.states):
            signal.observe(state, f)
        acct.profile.observe(f)

    # --- scoring -------------------------------------------------------------------------
    def _readings(self, acct: _Account) -> list[tuple[Signal, float, float]]:
        out = []
        for signal, state in zip(self.signals, acct.states):
            value = signal.value(state)
            if value is None:
                continue
            out.append((signal, value, signal.strength(value, self._baselines.get(signal.name))))
        return out

    @staticmethod
    def _combine(groups: dict[str, float]) -> float:
        return groups["intent"] * (0.5 + 0.5 * max(groups["automation"], groups["volume"]))

    def _own(self, acct: _Account) -> tuple[float, dict[str, float], list[Reason]]:
        parts: dict[str, list[float]] = {g: [] for g in GROUPS}
        reasons = []
        for signal, value, strength in self._readings(acct):
            parts[signal.group].append(signal.weight * strength)
            if strength > 0:
                base = self._baselines.get(signal.name)
                reasons.append(Reason(signal.name, signal.group, value, strength,
                                      base.median if base else None,
                                      signal.explain(value, base)))
        groups = {g: _noisy_or(p) for g, p in parts.items()}
        confidence = min(1.0, acct.events / max(self.min_events, 1))
        reasons.sort(key=lambda r: -r.strength)
        return self._combine(groups) * confidence, groups, reasons

    def account_risk(self, account: str) -> AccountRisk:
        """The account's risk and reasons (risk 0 and no reasons for an unseen account)."""
        with self._lock:
            acct = self._accounts.get(account)
            if acct is None:
                return AccountRisk(account, 0.0, 0.0, 0, [], {g: 0.0 for g in GROUPS})
            own, groups, reasons = self._own(acct)
            campaign = self._campaign_of.get(account)
        risk, name = own, None
        if campaign is not None:
            # Membership is always a reason, listed first: it is what an analyst checks.
            risk, name = max(own, campaign.risk), campaign.campaign_id
            reasons = [Reason("campaign", "campaign", campaign.risk, campaign.risk, None,
                              f"member of campaign {campaign.campaign_id} (risk "
                              f"{campaign.risk:.2f}) with {len(campaign.members)} accounts: "
                              + "; ".join(e.message for e in campaign.evidence))] + reasons
        return AccountRisk(account, round(risk, 4), round(own, 4), acct.events, reasons,
                           {g: round(v, 4) for g, v in groups.items()}, name)

    def signals_of(self, account: str) -> list[SignalReading]:
        """Every signal of the account with its value, strength and population baseline."""
        with self._lock:
            acct = self._accounts.get(account)
            if acct is None:
                return []
            out = []
            for signal, state in zip(self.signals, acct.states):
                value = signal.value(state)
                base = self._baselines.get(signal.name)
                strength = signal.strength(value, base) if value is not None else 0.0
                out.append(SignalReading(signal.name, signal.group, signal.description, value,
                                         strength, base,
                                         signal.explain(value, base) if value is not None
                                         else None))
            return out

    def accounts(self) -> list[str]:
        """Tracked accounts, least recently seen first."""
        with self._lock:
            return list(self._accounts)

    def observed_rpm(self, account: str) -> float | None:
        """The account's mean requests per minute since it was first seen (over at least
        ``OBSERVED_MIN_SPAN_S``), or None for an unseen account. Policy scales
        throttles by it, so a throttle binds an account that is slow to begin with."""
        with self._lock:
            acct = self._accounts.get(account)
            if acct is None or acct.events == 0:
                return None
            span = max(acct.last_seen - acct.first_seen, OBSERVED_MIN_SPAN_S)
            return acct.events * 60.0 / span

    def ranked(self, limit: int = 50, min_risk: float = 0.0) -> list[AccountRisk]:
        """Tracked accounts by risk, highest first."""
        risks = [self.account_risk(a) for a in self.accounts()]
        risks = [r for r in risks if r.risk >= min_risk]
        risks.sort(key=lambda r: (-r.risk, -r.events, r.account))
        return risks[:limit]

    # --- periodic job --------------------------------------------------------------------
    def _refresh_baselines(self) -> None:
        values: dict[str, list[float]] = {s.name: [] for s in self.signals}
        for acct in self._accounts.values():
            # The whole population, not only accounts with min_events: counting only
            # busy accounts lets heavy users and attackers set the "normal" level.
            if acct.events < self.baseline_min_events:
                continue
            for signal, state in zip(self.signals, acct.states):
                v = signal.value(state)
                if v is not None:
                    values[signal.name].append(v)
        baselines = {}
        for name, vs in values.items():
            if vs:
                arr = np.asarray(vs)
                baselines[name] = Baseline(float(np.median(arr)),
                                           float(np.percentile(arr, 90)), len(vs))
        self._baselines = baselines

    def _key_times(self) -> dict[str, float]:
        if self.store is None:
            return {}
        first: dict[str, float] = {}
        for record in self.store.list_keys():
            if record.account not in first or record.created_at < first[record.account]:
                first[record.account] = record.created_at
        return first

    def refresh(self) -> list[Campaign]:
        """The periodic job: population baselines, then campaigns. Returns the campaigns.

        Cost is linear in tracked accounts (plus one ``store.list_keys()``).
        """
        key_times = self._key_times()
        with self._lock:
            self._refresh_baselines()
            members = {}
            for name, acct in self._accounts.items():
                readings = {s.name: (s, v, st) for s, v, st in self._readings(acct)}
                members[name] = (acct.events, acct.profile, readings)
            campaigns = find_campaigns(members, key_times, self._baselines,
                                       n_topics=len(self.topic_map)
                                       if self.topic_map is not None else 0,
                                       combine=self._combine)
            self._campaigns = campaigns
            self._campaign_of = {m: c for c in campaigns for m in c.core}
        return campaigns

    def campaigns(self) -> list[Campaign]:
        """Campaigns found by the last ``refresh``, highest risk first."""
        with self._lock:
            return list(self._campaigns)

    def campaign(self, campaign_id: str) -> Campaign | None:
        """One campaign of the last ``refresh`` by id."""
        with self._lock:
            return next((c for c in self._campaigns if c.campaign_id == campaign_id), None)

    def baselines(self) -> dict[str, Baseline]:
        """The population baselines of the last ``refresh``, by signal name."""
        with self._lock:
            return dict(self._baselines)
