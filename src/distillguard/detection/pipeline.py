"""``DetectionPipeline``: events in, per-account risk with reasons and campaigns out.

``observe`` updates each account's signal states (bounded memory per account) and its
campaign profile; it never reads the store. ``refresh`` (the periodic job) recomputes
the population baselines and the campaigns; ``account_risk`` is cheap and reads what
the last refresh left, so call ``refresh`` every ``detection_interval`` seconds.

Scoring. Each signal's strength in [0, 1] counts within its group by noisy-OR of
``weight * strength``. Harvesting is taking value at scale, so::

    takes   = 1 - (1 - intent) * (1 - 0.5 * extraction)
    harvest = takes * (0.5 + 0.5 * max(automation, volume)) * (0.3 + 0.7 * extraction)
    risk    = max(harvest * min(1, events / detection_min_events), campaign risk)
            (campaign risk only for its core members, tied by two kinds of evidence)

Automation or volume alone (an evaluation harness, a busy RAG app) never makes risk:
it only multiplies what the account extracts. Intent measured as shares can be diluted
with cover traffic, so the absolute extraction (new reasoning-trace tokens and new
output per day) both counts as intent and scales the score: an account that asks for
reasoning but takes little of it stays low. Extraction stands in for intent at half its
weight (it was 0.7 while ``novel_output`` saturated at 1.5M tokens a day): a big retrieval
app takes much and shows no intent, and on the calibration split the fuller weight made
its group of linked keys score like a topic sweep.

Only served requests feed the signals. A refused request (403, 429) has no answer and
takes nothing; counting it would let a throttle lower the shares that set it and lift
itself. Refused requests are counted apart (``AccountRisk.refused``).

Baselines: the live population once ``detection_baseline_min_accounts`` accounts have
enough events; before that, the priors shipped with the package (``priors.json``, built
from ShareGPT by ``scripts/build_priors.py``). Each reason says which one it used.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from distillguard.detection.campaigns import Campaign, Profile, find_campaigns
from distillguard.detection.features import flat_features
from distillguard.detection.signals import (
    GROUPS,
    Baseline,
    EventFeatures,
    Signal,
    capped,
    create_signal,
    signal_names,
)
from distillguard.detection.space import PromptSpace, embed_slice, in_sample, sample_cut

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.asn import AsnTable
    from distillguard.detection.embedder import Embedder
    from distillguard.detection.sketch import PromptSketch
    from distillguard.telemetry.events import RequestEvent

log = logging.getLogger("distillguard.detection")

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
    scores that ``own_risk`` combines. ``age_s`` is the account's age at its latest
    request, from its first key (None when the key store does not know it);
    ``served_tokens`` the completion tokens it has been served (the new-account
    allowance rule reads both).
    """

    account: str
    risk: float
    own_risk: float
    events: int
    reasons: list[Reason]
    groups: dict[str, float]
    campaign: str | None = None
    refused: int = 0
    age_s: float | None = None
    served_tokens: int = 0

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


# Exact last-user-message hashes an account keeps before it samples them.
_DISTINCT_CAP = 256


class Distinct:
    """Which of an account's prompts are new to it, in bounded memory.

    Adaptive distinct sampling: it keeps the hashes whose low ``level`` bits are zero,
    at most ``_DISTINCT_CAP``, raising the level (halving the sample) when full. A
    sampled prompt is judged exactly; any other gets the recent novelty rate of the
    sampled ones (a moving average, so a benchmark's second run is seen as repeated
    within a few dozen requests). Plain attributes, so the state pickles.
    """

    __slots__ = ("level", "seen", "rate")

    def __init__(self) -> None:
        self.level = 0
        self.seen: set[int] = set()
        self.rate = 1.0

    def observe(self, h: int) -> float:
        """The weight of ``h`` being new (1.0 new, 0.0 repeated)."""
        x = h & 0xFFFFFFFF
        if x & ((1 << self.level) - 1):
            return self.rate
        if x in self.seen:
            self.rate *= 0.9
            return 0.0
        self.rate = 0.9 * self.rate + 0.1
        self.seen.add(x)
        if len(self.seen) > _DISTINCT_CAP:
            self.level += 1
            mask = (1 << self.level) - 1
            self.seen = {y for y in self.seen if not y & mask}
        return 1.0


class _Account:
    __slots__ = ("events", "first_seen", "last_seen", "states", "profile", "refused",
                 "distinct")

    def __init__(self, signals: Sequence[Signal]) -> None:
        self.events = 0
        self.refused = 0
        self.first_seen = -1.0
        self.last_seen = 0.0
        self.states = [s.new_state() for s in signals]
        self.profile = Profile()
        self.distinct = Distinct()


def _params_key(params: dict[str, Any]) -> int:
    items = sorted((k, repr(v)) for k, v in params.items() if k not in ("user", "stream"))
    return zlib.crc32(repr(items).encode())


def _params_key_cached(params: dict[str, Any]) -> int:
    """``_params_key``, memoised: clients resend the same few parameter sets. Keyed by
    each value's type as well as the value (``1``, ``1.0`` and ``True`` are equal but
    print apart); unhashable values (lists) are computed each time."""
    try:
        return _params_key_of(tuple(sorted((k, type(v), v) for k, v in params.items()
                                           if k not in ("user", "stream"))))
    except TypeError:
        return _params_key(params)


@functools.lru_cache(maxsize=4096)
def _params_key_of(items: tuple[tuple[str, type, Any], ...]) -> int:
    return zlib.crc32(repr([(k, repr(v)) for k, _, v in items]).encode())


def _noisy_or(parts: Iterable[float]) -> float:
    keep = 1.0
    for p in parts:
        keep *= 1.0 - min(max(p, 0.0), 1.0)
    return 1.0 - keep


class DetectionPipeline:
    """Per-account signals, risk with reasons, and campaigns; safe across threads.

    ``signup_evidence`` (optional) returns the sign-up records (objects or dicts with
    ``account``, ``domain``, ``prefix``, ``fingerprint``, ``ts``) that link accounts made
    together; campaigns then reach those accounts. ``embedder`` (optional) enables the
    coverage and prompt-distribution signals and the embedding half of the elicitation
    judge; ``topic_map`` (unit centroids, k x d) and ``prompt_reference``
    (``detection.sketch``) default to the shipped ones when an embedder is given.
    ``store`` (optional) lets campaigns read key creation times. ``clock`` is for tests.
    """

    def __init__(self, settings: Settings | None = None, *,
                 signals: Sequence[str] | None = None, embedder: Embedder | None = None,
                 topic_map: np.ndarray | None = None, store: Any = None,
                 prompt_reference: PromptSketch | None = None,
                 clock: Callable[[], float] = time.time,
                 signup_evidence: Callable[[], Iterable[Any]] | None = None,
                 space: PromptSpace | None = None) -> None:
        from distillguard.detection.elicitation import Elicitation

        sample = settings.detection_embedding_sample if settings is not None else 1.0
        if space is None and embedder is not None:
            # Shipped topic map and reference where none is given; a space passed in is
            # taken as it is.
            space = PromptSpace.build(embedder, topic_map=topic_map,
                                      sketch=prompt_reference, sample=sample)
        self.settings = settings
        self.min_events = settings.detection_min_events if settings is not None else 20
        self.baseline_min_events = (settings.detection_baseline_min_events
                                    if settings is not None else 3)
        self.baseline_min_accounts = (settings.detection_baseline_min_accounts
                                      if settings is not None else 20)
        from distillguard.detection.priors import load_priors

        self.priors = load_priors()
        self.max_accounts = settings.detection_max_accounts if settings is not None else 100_000
        self.signals: list[Signal] = [create_signal(n, settings)
                                      for n in (signals or signal_names())]
        self._observers = [s.observe for s in self.signals]  # bound once: the hot loop
        # The space prompts are read in (also what the gateway derives without text).
        self.space: PromptSpace | None = space
        self.embedder = space.embedder if space is not None else None
        self.topic_map = space.topic_map if space is not None else topic_map
        topic_map = self.topic_map
        n_topics = len(topic_map) if topic_map is not None else 0
        for s in self.signals:
            if s.name == "coverage":
                s.n_topics = n_topics  # type: ignore[attr-defined]
        self.elicitation = space.elicitation if space is not None else Elicitation(None)
        # The prompt-distribution test: each embedding's random Fourier features, once.
        self.sketch = space.sketch if space is not None else None
        for s in self.signals:
            if s.name == "prompt_distribution":
                s.reference = self.sketch  # type: ignore[attr-defined]
        self._sample_cut = space.sample_cut if space is not None else sample_cut(sample)
        self.store = store
        self.asn_table: AsnTable | None = None
        if settings is not None and settings.asn_table:
            from distillguard.detection.asn import load_asn_table

            self.asn_table = load_asn_table(settings.asn_table)
        self.signup_evidence = signup_evidence
        self.clock = clock
        self._lock = threading.RLock()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        self._baselines: dict[str, Baseline] = {}
        self._campaigns: list[Campaign] = []
        self._campaign_of: dict[str, Campaign] = {}
        # Account -> when its first key was made, as of the last refresh.
        self._key_made: dict[str, float] = {}
        self._output_i = next((i for i, s in enumerate(self.signals)
                               if s.name == "output_rate"), -1)
        # digest of the prompt -> (topic, close to an eliciting exemplar, embedding, sketch
        # features); repeated prompts pay once.
        self._info: OrderedDict[int, tuple[int, bool, np.ndarray | None,
                                           np.ndarray | None]] = OrderedDict()
        # For the console's detection lag: when the last round ran (wall clock) and the
        # arrival time of the newest event observed.
        self.refreshed_at: float | None = None
        self.newest_event_ts: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, store: Any = None,
                      space: PromptSpace | None = None) -> DetectionPipeline:
        """The pipeline the settings describe (MiniLM embeddings when enabled; ``space``,
        when given, is the embedding space to read prompts in instead)."""
        if space is not None:
            return cls(settings, store=store, space=space)
        embedder = None
        if settings.detection_embeddings and not _embeddings_installed():
            log.warning("detection_embeddings is on but torch/transformers are not "
                        "installed (pip install 'distillguard[local]'): the coverage and "
                        "elicitation signals use their lexical part only")
        elif settings.detection_embeddings:
            from distillguard.detection.embedder import settings_embedder

            embedder = settings_embedder(settings)
        return cls(settings, embedder=embedder, store=store)

    # --- observing ---------------------------------------------------------------------
    def sampled(self, text: str) -> bool:
        """Whether ``text`` is in the embedded sample (``detection_embedding_sample``)."""
        return in_sample(text, self._sample_cut)

    def _prompt_info(self, text: str, embedding: np.ndarray | None = None
                     ) -> tuple[int, bool, np.ndarray | None, np.ndarray | None]:
        key = hash(text)
        info = self._info.get(key)
        if info is not None:
            return info
        if (embedding is None and self.embedder is not None and text
                and self.sampled(text)):
            embedding = self.embedder.embed([text])[0]
        topic = -1
        phi = None
        similar = False
        if embedding is not None and self.space is not None:
            topic, similarity, phi = self.space.info(embedding)
            # The cue half of the judge ran where the event was built (``features``
            # ``elicit``): only the embedding half is the prompt's to add here.
            similar = similarity >= self.elicitation.threshold
        info = (topic, similar, embedding, phi)
        self._info[key] = info
        if len(self._info) > _INFO_CACHE:
            self._info.popitem(last=False)
        return info

    @staticmethod
    def raw_features(event: RequestEvent) -> dict[str, Any] | None:
        """The event's prompt features: as the gateway computed them from the message
        list, or (events stored before features existed) from the flattened prompt."""
        if event.features is not None:
            return event.features
        if event.prompt:
            return flat_features(event.prompt, event.params or {})
        return None

    @staticmethod
    def embed_text(event: RequestEvent, raw: dict[str, Any] | None) -> str:
        """The last user message's text, sliced out of the stored prompt by the span the
        gateway recorded ("" when prompts are not retained)."""
        return embed_slice(event.prompt, raw)

    def _features(self, event: RequestEvent, embedding: np.ndarray | None = None
                  ) -> EventFeatures:
        params = event.params or {}
        raw = self.raw_features(event)
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        if raw is None:
            return EventFeatures(
                event=event, ts=event.ts, end_ts=event.ts + event.latency_ms / 1000.0,
                ok=event.status == 200, params_key=_params_key_cached(params),
                max_tokens=max_tokens if isinstance(max_tokens, int) else None, n=1,
                logprobs=False, assistant_turns=0, bands=(), topic=-1, embedding=None,
                elicits=False)
        # Without embeddings the features already hold all a prompt says (the cue
        # judge ran where the event was built).
        text = self.embed_text(event, raw) if self.embedder is not None else ""
        topic, similar, emb, phi = (self._prompt_info(text, embedding) if text
                                    else (-1, False, None, None))
        if not text and self.space is not None:
            # No prompt text (``retain_prompts = false``): what the gateway derived from
            # it in this space before dropping it, if it did (no embedding is stored).
            stored = self.space.stored(raw)
            if stored is not None:
                topic, similarity, phi = stored
                similar = similarity >= self.elicitation.threshold
        if "elicit" in raw:
            elicits = bool(raw["elicit"]) or similar
        else:  # features from before the cue judge ran where the event was built
            elicits = similar or (bool(text) and self.elicitation.by_cue(text))
        return EventFeatures(
            event=event, ts=event.ts, end_ts=event.ts + event.latency_ms / 1000.0,
            ok=event.status == 200, params_key=_params_key_cached(params),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            n=int(raw.get("n") or 1), logprobs=bool(raw.get("logprobs")),
            assistant_turns=int(raw.get("turns") or 0),
            bands=tuple(raw.get("bands") or ()), topic=topic, embedding=emb,
            elicits=elicits,
            wrappers=tuple(raw.get("wrap") or ()), tools=int(raw.get("tools") or 0),
            raw=raw, sketch=phi)

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
                if e.account is not None and e.prompt and e.status == 200:
                    t = self.embed_text(e, self.raw_features(e))
                    if t and hash(t) not in self._info and self.sampled(t):
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
        if not f.ok:
            # Refused or failed: nothing was taken. It still ties the account to its
            # infrastructure (campaign profile) but moves none of its signals.
            acct.refused += 1
            if f.event.status in (403, 429):
                acct.profile.observe_client(f)
            return
        if f.raw is not None and "h" in f.raw:
            f.novel = acct.distinct.observe(int(f.raw["h"]))
        acct.events += 1
        if acct.first_seen < 0:
            acct.first_seen = f.ts
        acct.last_seen = f.ts
        if self.newest_event_ts is None or f.ts > self.newest_event_ts:
            self.newest_event_ts = f.ts
        for observe, state in zip(self._observers, acct.states):
            observe(state, f)
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
        extraction = groups.get("extraction", 0.0)
        takes = 1.0 - (1.0 - groups["intent"]) * (1.0 - 0.5 * extraction)
        return (takes * (0.5 + 0.5 * max(groups["automation"], groups["volume"]))
                * (0.3 + 0.7 * extraction))

    def _own(self, acct: _Account) -> tuple[float, dict[str, float], list[Reason]]:
        parts: dict[str, list[float]] = {g: [] for g in GROUPS}
        reasons = []
        for signal, value, strength in self._readings(acct):
            parts[signal.group].append(signal.weight * strength)
            # A signal scored at weight 0 is reported (signals_of), never a reason.
            if strength > 0 and signal.weight > 0:
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
            refused = acct.refused
            own, groups, reasons = self._own(acct)
            campaign = self._campaign_of.get(account)
            made = self._key_made.get(account)
            age = max(0.0, acct.last_seen - made) if made is not None else None
            # The output rate's state holds every completion token served (refused
            # requests have none).
            served = int(acct.states[self._output_i][2]) if self._output_i >= 0 else 0
        risk, name = own, None
        if campaign is not None:
            # Membership is always a reason, listed first: it is what an analyst checks.
            risk, name = max(own, campaign.risk), campaign.campaign_id
            reasons = [Reason("campaign", "campaign", campaign.risk, campaign.risk, None,
                              f"member of campaign {campaign.campaign_id} (risk "
                              f"{campaign.risk:.2f}) with {len(campaign.members)} accounts: "
                              + "; ".join(e.message for e in campaign.evidence))] + reasons
        return AccountRisk(account, round(risk, 4), round(own, 4), acct.events, reasons,
                           {g: round(v, 4) for g, v in groups.items()}, name, refused,
                           age, served)

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

    def profile_of(self, account: str) -> Profile | None:
        """The account's campaign profile (prefixes, agents, templates, timing), or None;
        the console draws a campaign's links from its members' profiles."""
        with self._lock:
            acct = self._accounts.get(account)
            return acct.profile if acct is not None else None

    def accounts(self) -> list[str]:
        """Tracked accounts, least recently seen first."""
        with self._lock:
            return list(self._accounts)

    def account_count(self) -> int:
        """How many accounts are tracked (``accounts()`` walks an ordered dict that every
        request reorders: 0.1-0.3 s at 100,000 accounts)."""
        with self._lock:
            return len(self._accounts)

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
            # A handful of accounts is no baseline: the prior, else none at all.
            if len(vs) >= self.baseline_min_accounts:
                arr = np.asarray(vs)
                baselines[name] = capped(Baseline(float(np.median(arr)),
                                                  float(np.percentile(arr, 90)), len(vs)),
                                         self.priors.get(name))
            elif name in self.priors:
                baselines[name] = self.priors[name]
        self._baselines = baselines

    def _key_times(self) -> dict[str, float]:
        if self.store is None:
            return {}
        first: dict[str, float] = {}
        for record in self.store.list_keys():
            if record.account not in first or record.created_at < first[record.account]:
                first[record.account] = record.created_at
        return first

    def _signup_links(self) -> dict[str, list[Any]]:
        """Account -> the sign-up keys it shares (normalised e-mail domain with the
        sign-up address prefix, and the client fingerprint), from ``signup_evidence``."""
        if self.signup_evidence is None:
            return {}
        links: dict[str, list[Any]] = {}
        for rec in self.signup_evidence():
            get = rec.get if isinstance(rec, dict) else lambda k, r=rec: getattr(r, k, None)
            account = get("account")
            if not account:
                continue
            keys = links.setdefault(account, [])
            if get("fingerprint"):
                keys.append(("fingerprint", get("fingerprint")))
            if get("domain") and get("prefix"):
                keys.append(("domain+prefix", get("domain"), get("prefix")))
        return links

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
            states = {name: acct.states for name, acct in self._accounts.items()}
            campaigns = find_campaigns(members, key_times, self._baselines,
                                       n_topics=len(self.topic_map)
                                       if self.topic_map is not None else 0,
                                       combine=self._combine, signals=self.signals,
                                       states=states, min_events=self.min_events,
                                       signup=self._signup_links(),
                                       asn=self.asn_table.lookup
                                       if self.asn_table is not None else None)
            self._campaigns = campaigns
            self._campaign_of = {m: c for c in campaigns for m in c.core}
            self._key_made = key_times
            self.refreshed_at = time.time()
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


def embeddings_available(settings: Settings) -> bool:
    """Whether detection with these settings embeds prompts (on, and installed)."""
    return bool(settings.detection_embeddings) and _embeddings_installed()


def _embeddings_installed() -> bool:
    # A lean install (no `local` extra) has no torch: detection runs on lexical features.
    try:
        return all(importlib.util.find_spec(name) is not None
                   for name in ("torch", "transformers"))
    except (ImportError, ValueError):  # a finder that refuses the module, a broken stub
        return False
