"""The built-in signals. Each registers by name exactly as a third-party signal would.

Thresholds are absolute anchors chosen from what the signal means (e.g. a coefficient of
variation of inter-arrival gaps under 0.15 is clockwork; human traffic is bursty, above
1); volume signals compare against the population's median instead, because what counts
as "a lot" depends on the service.
"""

from __future__ import annotations

import abc
import hashlib
import math
from typing import Any

import numpy as np

from distillguard.detection.campaigns import network_prefix
from distillguard.detection.signals import Baseline, EventFeatures, register_signal

# Gaps longer than this are pauses between sessions, not inter-arrival times.
MAX_GAP_S = 600.0
# A topic histogram needs this many prompts before its spread means anything.
MIN_TOPIC_PROMPTS = 30
LONG_COMPLETION_TOKENS = 512


def ramp(x: float, lo: float, hi: float) -> float:
    """0 at ``lo``, 1 at ``hi``, linear between (``hi < lo`` ramps downwards)."""
    if hi == lo:
        return 1.0 if x >= hi else 0.0
    t = (x - lo) / (hi - lo)
    return 0.0 if t <= 0 else 1.0 if t >= 1 else t


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _vs(baseline: Baseline | None, fmt: str = "{:.2f}") -> str:
    return baseline.describe(fmt) if baseline else "no population baseline yet"


class _Builtin:
    """Base of the built-in signals: keeps the settings it was created with."""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings


class _Ratio(_Builtin):
    """Base for signals whose state starts ``[hits, requests]`` and whose value is
    their ratio; subclasses define ``observe``.

    A share reads from an account's 5th request (it was the 10th): a new account asking
    for reasoning or the longest answers shows it within its first minutes. A share of
    5 is coarse, but an account's own risk is scaled down until
    ``detection_min_events`` (20), so it alone acts on no one that early. On the
    calibration split this moved no benign account's highest score (``calibration.json``
    unchanged); with rotation also read from the 5th request, the topic sweep was
    refused after 2 minutes instead of 3 (each change alone: 3).
    """

    group = "automation"
    weight = 0.3
    lo, hi = 0.5, 0.9
    min_requests = 5
    what = ""

    def new_state(self) -> list[int]:
        return [0, 0]  # hits, requests

    def merge(self, states: list[Any]) -> Any:
        """Pooled state of several accounts: counts add up."""
        return [sum(s[0] for s in states), sum(s[1] for s in states)]

    def value(self, state: list[int]) -> float | None:
        return state[0] / state[1] if state[1] >= self.min_requests else None

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, self.lo, self.hi)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return f"{_pct(value)} of requests {self.what} ({_vs(baseline, '{:.0%}')})"


class _Share(_Ratio, abc.ABC):
    """Base for signals that are the share of requests with some property (``hit``)."""

    @abc.abstractmethod
    def hit(self, f: EventFeatures) -> bool:
        """Whether the request has the property."""

    def observe(self, state: list[int], f: EventFeatures) -> None:
        state[1] += 1
        if self.hit(f):
            state[0] += 1


@register_signal
class MaxTokensSignal(_Share):
    """Share of requests asking for (nearly) the largest ``max_tokens`` allowed."""

    name = "max_tokens_max"
    group = "intent"
    weight = 0.35
    lo, hi = 0.5, 0.95
    description = "share of requests that ask for the largest max_tokens allowed"
    what = "ask for the largest max_tokens allowed"

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        limit = settings.max_tokens_limit if settings is not None else 4096
        self.threshold = 0.9 * limit

    def hit(self, f: EventFeatures) -> bool:
        return f.max_tokens is not None and f.max_tokens >= self.threshold


@register_signal
class MultiChoiceSignal(_Share):
    """Share of requests with ``n > 1`` (several samples of one prompt: distillation data)."""

    name = "multi_choice"
    group = "intent"
    weight = 0.3
    lo, hi = 0.2, 0.8
    description = "share of requests asking for several choices (n > 1)"
    what = "ask for several choices (n > 1)"

    def hit(self, f: EventFeatures) -> bool:
        return f.n > 1


@register_signal
class LogprobsSignal(_Share):
    """Share of requests asking for log-probabilities (soft labels for a student)."""

    name = "logprobs"
    group = "intent"
    weight = 0.3
    lo, hi = 0.2, 0.8
    description = "share of requests asking for token log-probabilities"
    what = "ask for token log-probabilities"

    def hit(self, f: EventFeatures) -> bool:
        return f.logprobs


@register_signal
class IdenticalParamsSignal(_Ratio):
    """Share of requests with the account's most common sampling parameters.

    Weak alone (any application sends fixed parameters), so its weight is small; it
    separates scripted traffic from people who change settings.
    """

    name = "identical_params"
    group = "automation"
    weight = 0.15
    lo, hi = 0.9, 1.0
    description = "share of requests with exactly the account's most common parameters"
    min_requests = 20
    merge = None  # a table of parameter keys: no pooled meaning

    def new_state(self) -> list[Any]:
        # [requests, {params key: count}] with at most 8 keys (Misra-Gries summary).
        return [0, {}]

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        state[0] += 1
        counts: dict[int, int] = state[1]
        key = f.params_key
        if key in counts or len(counts) < 8:
            counts[key] = counts.get(key, 0) + 1
        else:
            for k in list(counts):
                counts[k] -= 1
                if counts[k] <= 0:
                    del counts[k]

    def value(self, state: list[Any]) -> float | None:
        if state[0] < self.min_requests or not state[1]:
            return None
        return max(state[1].values()) / state[0]

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"{_pct(value)} of requests use identical sampling parameters "
                f"({_vs(baseline, '{:.0%}')})")


@register_signal
class SingleTurnSignal(_Share):
    """Share of requests that carry no earlier assistant turn (no follow-up questions)."""

    name = "single_turn"
    group = "intent"
    weight = 0.15
    lo, hi = 0.9, 1.0
    min_requests = 20
    description = "share of requests without any follow-up turn"
    what = "are single-shot asks with no follow-up turn"

    def hit(self, f: EventFeatures) -> bool:
        return f.assistant_turns == 0


@register_signal
class LongCompletionSignal(_Share):
    """Share of successful completions that are long or hit their ``max_tokens`` cap."""

    name = "long_completions"
    group = "intent"
    weight = 0.45
    lo, hi = 0.3, 0.8
    description = f"share of completions of {LONG_COMPLETION_TOKENS}+ tokens or cut at max_tokens"
    what = f"got completions of {LONG_COMPLETION_TOKENS}+ tokens or cut at max_tokens"

    def observe(self, state: list[int], f: EventFeatures) -> None:
        if f.ok:
            super().observe(state, f)

    def hit(self, f: EventFeatures) -> bool:
        out = f.event.completion_tokens
        cap = f.max_tokens
        return out >= LONG_COMPLETION_TOKENS or (cap is not None and cap >= 64
                                                 and out >= 0.95 * cap * max(f.n, 1))


@register_signal
class ElicitationSignal(_Share):
    """Share of prompts that elicit reasoning traces or build datasets.

    A prompt counts when it asks for step-by-step reasoning, chain of thought, rubric
    grading, safe rewrites, JSON rows or numbered synthetic tasks, judged by the
    pipeline's ``Elicitation`` detector (multilingual cue patterns plus embedding
    similarity to exemplar prompts in several languages).
    """

    name = "elicitation"
    group = "intent"
    weight = 0.6
    lo, hi = 0.25, 0.7
    description = "share of prompts eliciting reasoning traces or dataset rows"
    what = "elicit reasoning traces or dataset rows"

    def hit(self, f: EventFeatures) -> bool:
        return f.elicits


@register_signal
class TemplatingSignal(_Ratio):
    """Share of prompts that fill a skeleton the account already used.

    A prompt's skeleton is its last user turn with numbers, names and quoted spans
    masked; two skeletons match when they share a MinHash LSH band (Jaccard of word
    3-grams above about 0.6) or, for long prompts, the same first or last six words (a
    fixed wrapper around varying questions). The state remembers at most 512 hashes.
    """

    name = "templating"
    group = "automation"
    weight = 0.45
    lo, hi = 0.4, 0.85
    min_requests = 15
    description = "share of prompts that reuse an earlier prompt skeleton of the account"
    what = "reuse an earlier prompt skeleton (numbers, names, quotes masked)"

    def new_state(self) -> list[Any]:
        return [0, 0, set()]  # reused, prompts, bands seen

    def merge(self, states: list[Any]) -> Any:
        """Pooled: reuse counts add up (sharing across members is campaign evidence)."""
        return [sum(s[0] for s in states), sum(s[1] for s in states), set()]

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        if not f.bands:
            return
        seen: set[int] = state[2]
        state[1] += 1
        if not seen.isdisjoint(f.bands) or not seen.isdisjoint(f.wrappers):
            state[0] += 1
        if len(seen) < 512:
            seen.update(f.bands)
            seen.update(f.wrappers)


@register_signal
class CoverageSignal(_Builtin):
    """How evenly the account's prompts spread over the topic map (normalised entropy).

    A person asks about their own work and hobbies (a few topics); a harvester sweeps a
    capability area topic after topic. The value is the entropy of the account's topic
    histogram divided by log(topics): 0 for one topic, 1 for a perfectly even sweep.
    ``explain`` adds the distinct topics and the embedding dispersion (1 - length of the
    mean unit vector).

    Reported (``signals_of``, the console), not scored: weight 0. On the evaluation's
    calibration split (embeddings on, 25% sampled) it raised benign heavy users more
    than any attacker: the big RAG app's highest risk went from 0.31 to 0.40, batch
    jobs from 0.07 to 0.13-0.14, so the calibrated block threshold rose from 0.34 to
    0.43 and 5 of 46 attack accounts (the topic sweep) fell under it. Scored at 0, the
    benign maximum is 0.31 and 46 of 46 attack accounts reach the threshold. A busy
    application whose users ask about everything spreads over the map as evenly as a
    sweep does.
    """

    name = "coverage"
    group = "intent"
    weight = 0.0
    description = "how evenly prompts sweep the topic map (normalised entropy)"

    def new_state(self) -> list[Any]:
        return [0, None, None]  # prompts, topic counts (int32), sum of unit vectors

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        if f.topic < 0:
            return
        if state[1] is None:
            state[1] = {}
        state[0] += 1
        state[1][f.topic] = state[1].get(f.topic, 0) + 1
        # A topic stored without text (``retain_prompts = false``) comes without its
        # embedding: it counts in the histogram (the value), not in the dispersion sum.
        if f.embedding is not None:
            if state[2] is None:
                state[2] = np.zeros(len(f.embedding), dtype=np.float32)
            state[2] += f.embedding

    @staticmethod
    def entropy(counts: dict[int, int], topics: int) -> float:
        total = sum(counts.values())
        if total == 0 or topics < 2:
            return 0.0
        h = -sum(c / total * math.log(c / total) for c in counts.values())
        return h / math.log(topics)

    def topics(self) -> int:
        return getattr(self, "n_topics", 48)

    def value(self, state: list[Any]) -> float | None:
        if state[0] < MIN_TOPIC_PROMPTS:
            return None
        return self.entropy(state[1], self.topics())

    def dispersion(self, state: list[Any]) -> float | None:
        if not state[0] or state[2] is None:
            return None
        return 1.0 - float(np.linalg.norm(state[2])) / state[0]

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 0.7, 0.9)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"prompts spread over the topic map with normalised entropy {value:.2f} "
                f"(1.00 = even sweep of all {self.topics()} topics; {_vs(baseline)})")


@register_signal
class OutputRatioSignal(_Builtin):
    """Completion tokens per prompt token over the account's successful requests."""

    name = "output_ratio"
    group = "intent"
    weight = 0.35
    description = "completion tokens per prompt token"

    def new_state(self) -> list[int]:
        return [0, 0, 0]  # prompt tokens, completion tokens, requests

    def merge(self, states: list[Any]) -> Any:
        """Pooled: token counts add up."""
        return [sum(s[i] for s in states) for i in range(3)]

    def observe(self, state: list[int], f: EventFeatures) -> None:
        if f.ok:
            state[0] += f.event.prompt_tokens
            state[1] += f.event.completion_tokens
            state[2] += 1

    def value(self, state: list[int]) -> float | None:
        if state[2] < 10:
            return None
        return state[1] / max(state[0], 1)

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(math.log10(max(value, 1e-6)), math.log10(4), math.log10(20))

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return f"{value:.1f} completion tokens per prompt token ({_vs(baseline, '{:.1f}')})"


@register_signal
class RegularitySignal(_Builtin):
    """Coefficient of variation of inter-arrival gaps (gaps under 10 minutes).

    People are bursty (CV above 1); a script sleeping a fixed interval is clockwork (CV
    near 0). Running moments only: count, mean, M2 (Welford).
    """

    name = "regularity"
    group = "automation"
    weight = 0.4
    description = "coefficient of variation of inter-arrival gaps (low = clockwork)"

    def new_state(self) -> list[float]:
        return [-1.0, 0, 0.0, 0.0]  # last ts, gaps, mean, M2

    def observe(self, state: list[float], f: EventFeatures) -> None:
        last = state[0]
        state[0] = f.ts
        if last < 0:
            return
        gap = f.ts - last
        if gap < 0 or gap > MAX_GAP_S:
            return
        n = state[1] + 1
        delta = gap - state[2]
        state[1] = n
        state[2] += delta / n
        state[3] += delta * (gap - state[2])

    def value(self, state: list[float]) -> float | None:
        n, mean = state[1], state[2]
        if n < 20 or mean <= 0:
            return None
        return math.sqrt(state[3] / (n - 1)) / mean

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 0.5, 0.15)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"inter-arrival gaps vary by CV {value:.2f} (clockwork near 0, people "
                f"above 1; {_vs(baseline)})")


@register_signal
class ParallelismSignal(_Builtin):
    """Mean number of the account's requests in flight when one arrives (itself included).

    Keeps the end times of at most 64 in-flight requests.
    """

    name = "parallelism"
    group = "automation"
    weight = 0.35
    description = "mean requests in flight at each arrival"

    def new_state(self) -> list[Any]:
        return [[], 0, 0]  # end times in flight, requests, sum of in-flight counts

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        ends: list[float] = state[0]
        ts = f.ts
        live = [e for e in ends if e > ts]
        live.append(f.end_ts)
        if len(live) > 64:
            live.sort()
            del live[:-64]
        state[0] = live
        state[1] += 1
        state[2] += len(live)

    def value(self, state: list[Any]) -> float | None:
        return state[2] / state[1] if state[1] >= 10 else None

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 2.0, 8.0)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"{value:.1f} requests in flight on average at each arrival "
                f"({_vs(baseline, '{:.1f}')})")


class _Rate(_Builtin):
    """Requests (or tokens) per hour of the account's active span vs the population."""

    group = "volume"
    weight = 0.45
    unit = "requests"

    def new_state(self) -> list[float]:
        return [0.0, 0.0, 0.0]  # first ts, last ts, amount

    def amount(self, f: EventFeatures) -> float:
        return 1.0

    def observe(self, state: list[float], f: EventFeatures) -> None:
        if state[2] == 0 and state[0] == 0:
            state[0] = f.ts
        state[1] = f.ts
        state[2] += self.amount(f)

    def merge(self, states: list[Any]) -> Any:
        """Pooled: one operator's span and the summed amount."""
        live = [s for s in states if s[2] > 0]
        if not live:
            return self.new_state()
        return [min(s[0] for s in live), max(s[1] for s in live), sum(s[2] for s in live)]

    def value(self, state: list[float]) -> float | None:
        if state[2] <= 0:
            return None
        hours = max((state[1] - state[0]) / 3600.0, 1.0)  # at least an hour: no bursts
        return state[2] / hours

    def strength(self, value: float, baseline: Baseline | None) -> float:
        if baseline is None or baseline.accounts < 10 or baseline.median <= 0:
            return 0.0
        # 4x the median starts to count, 40x is as suspicious as volume gets.
        return ramp(math.log10(max(value, 1e-9) / baseline.median), math.log10(4),
                    2 - math.log10(2.5))

    def explain(self, value: float, baseline: Baseline | None) -> str:
        ratio = (f", {value / baseline.median:.0f}x the median"
                 if baseline and baseline.median > 0 else "")
        return (f"{value:,.0f} {self.unit} per hour{ratio} ({_vs(baseline, '{:,.0f}')})")


@register_signal
class RequestRateSignal(_Rate):
    """Requests per hour of activity, against the population median."""

    name = "request_rate"
    description = "requests per hour of activity vs the population"


@register_signal
class OutputRateSignal(_Rate):
    """Completion tokens per hour of activity, against the population median."""

    name = "output_rate"
    unit = "completion tokens"
    weight = 0.55
    description = "completion tokens per hour of activity vs the population"

    def amount(self, f: EventFeatures) -> float:
        return float(f.event.completion_tokens)


@register_signal
class DutyCycleSignal(_Builtin):
    """Share of minutes with at least one request, over the account's active span.

    Sustained: a person works in sessions; a harvester keeps every minute busy. Needs a
    span of 30 minutes before it says anything.
    """

    name = "duty_cycle"
    group = "automation"
    weight = 0.3
    description = "share of minutes with requests over the active span"

    def new_state(self) -> list[int]:
        return [-1, -1, 0]  # first minute, last minute, active minutes

    def observe(self, state: list[int], f: EventFeatures) -> None:
        minute = int(f.ts // 60)
        if state[0] < 0:
            state[0] = minute
        if minute != state[1]:
            state[1] = minute
            state[2] += 1

    def value(self, state: list[int]) -> float | None:
        span = state[1] - state[0] + 1
        return state[2] / span if span >= 30 else None

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 0.4, 0.9)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"requests in {_pct(value)} of the minutes of its active span "
                f"({_vs(baseline, '{:.0%}')})")


@register_signal
class AllHoursSignal(_Builtin):
    """Share of the 24 hours of the day (UTC) with activity; needs a day of history.

    People sleep; a pipeline running around the clock does not.
    """

    name = "all_hours"
    group = "automation"
    weight = 0.3
    description = "share of the 24 hours of day with requests"

    def new_state(self) -> list[float]:
        return [0, -1.0, 0.0]  # hour bitmask, first ts, last ts

    def observe(self, state: list[float], f: EventFeatures) -> None:
        state[0] = int(state[0]) | (1 << int((f.ts // 3600) % 24))
        if state[1] < 0:
            state[1] = f.ts
        state[2] = f.ts

    def value(self, state: list[float]) -> float | None:
        if state[2] - state[1] < 20 * 3600:
            return None
        return bin(int(state[0])).count("1") / 24

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 16 / 24, 23 / 24)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"active in {round(value * 24)} of the 24 hours of the day "
                f"({_vs(baseline, '{:.0%}')})")


@register_signal
class RateSurgeSignal(_Builtin):
    """Requests in the current hour against the account's own average active hour.

    Own history: an account that suddenly runs far above its habit (a bought or
    hijacked account turned harvester). EWMA over completed active hours.
    """

    name = "rate_surge"
    group = "volume"
    weight = 0.3
    description = "requests this hour vs the account's own average hour"

    def new_state(self) -> list[float]:
        return [-1, 0, 0.0, 0, 0.0]  # current hour, its count, EWMA, hours, max ratio

    def observe(self, state: list[float], f: EventFeatures) -> None:
        hour = int(f.ts // 3600)
        if hour != state[0]:
            if state[0] >= 0:
                state[2] = state[1] if state[3] == 0 else 0.7 * state[2] + 0.3 * state[1]
                state[3] += 1
            state[0] = hour
            state[1] = 0
        state[1] += 1
        if state[3] >= 3 and state[2] > 0:
            state[4] = max(state[4], state[1] / state[2])

    def value(self, state: list[float]) -> float | None:
        return state[4] if state[3] >= 3 else None

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 5.0, 30.0)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"peak hour ran {value:.1f}x the account's own average active hour "
                f"({_vs(baseline, '{:.1f}')})")


# Distinct (address prefix, user agent) pairs an account remembers; a pair seen before
# is not new.
_CHURN_CLIENTS = 64


def _client_pair(addr: str | None, agent: str | None) -> int:
    """A 64-bit digest of (address prefix, user agent). Not ``hash()``: Python salts
    it per process, so a checkpoint restored after a restart would hold digests no
    request matches and every remembered client would count as new again (forever, for
    an account that remembers ``_CHURN_CLIENTS``). BLAKE2b, so that a rotating client
    cannot pick user agents whose digests repeat its earlier ones."""
    text = f"{network_prefix(addr)}\x00{(agent or '')[:200]}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@register_signal
class ClientChurnSignal(_Builtin):
    """Share of requests sent from an (address prefix, user agent) pair the account had
    not used before: a script rotating a proxy pool or a list of user agents sends
    nearly every request from a new one.

    People and applications come back from the places and programs they sent from: a
    person from home, work and a phone (a new pair at the start of a session, not within
    it), an app from its servers, a shared key from each member's own few. The account
    remembers up to ``_CHURN_CLIENTS`` pairs; once full, a pair it does not hold counts
    as new, so a pool that never repeats stays near 1 and a team of up to that many
    people stays low.
    """

    name = "client_churn"
    group = "automation"
    weight = 0.35
    description = ("share of requests from an address prefix and user agent the account "
                   "had not used before")
    min_requests = 5

    def new_state(self) -> list[Any]:
        return [0, 0, set()]  # requests from a new pair, requests, pairs seen

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        e = f.event
        pair = _client_pair(e.client_addr, e.user_agent)
        state[1] += 1
        seen: set[int] = state[2]
        if pair not in seen:
            if state[1] > 1:  # an account's first request is new by definition
                state[0] += 1
            if len(seen) < _CHURN_CLIENTS:
                seen.add(pair)

    def merge(self, states: list[Any]) -> Any:
        """Pooled: counts add up (each member judged against its own pairs)."""
        return [sum(s[0] for s in states), sum(s[1] for s in states), set()]

    def value(self, state: list[Any]) -> float | None:
        return state[0] / state[1] if state[1] >= self.min_requests else None

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(value, 0.6, 0.9)

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"{_pct(value)} of requests came from an address prefix and user agent "
                f"the account had not used before (a rotating proxy pool or agent list; "
                f"people return to a few; {_vs(baseline, '{:.0%}')})")


# Extraction is measured per day of activity, over at least this long a span: a burst
# of an hour is projected to a day at a quarter of its rate, so a fresh account taking
# a lot at once is seen within its first few dozen requests.
HAUL_MIN_SPAN_S = 3 * 3600.0
# The same floor for a linked group's pooled haul (``_Haul.merge``): its members' burst
# is one operation's, not one person's. On the calibration split the topic sweep's
# campaign was refused after 10 minutes instead of 18 with an hour, and the benign group
# of linked retrieval apps rose from 0.24 to 0.27 (its first hour, projected to a day).
# A quarter of an hour since established accounts tied only by copyable evidence are
# judged apart (``campaigns._apart``): the sweep was refused after 4 minutes instead of 9
# (3 with its rotation counted as intent, ``campaigns._score``), and the highest benign
# group's risk stayed 0.186 (calibration split, 24 h, embeddings off).
CAMPAIGN_HAUL_MIN_SPAN_S = 900.0
# The share of an answer that counts as taken however long the prompt was: padding a
# question with unrelated text hides at most the rest.
HAUL_FLOOR = 0.25
# Greedy (temperature 0) tokens an account (or a whole campaign, pooled) may take before
# the extraction signals count them: about one chain-of-thought benchmark run (500 items
# of 500 tokens). An evaluation harness runs a benchmark at temperature 0 once and then
# repeats it; a distiller who copies that gets this much per verified account (the
# adaptive attacker's figures measure it).
GREEDY_ALLOWANCE_TOKENS = 250_000


class _Haul(_Builtin):
    """Completion tokens taken per day on prompts the account had not sent before,
    beyond what the prompt itself held.

    Absolute amounts, not shares: cheap requests of another kind do not lower it. An
    evaluation harness re-running a fixed benchmark sends the same prompts again, so
    its repeated runs add nothing here (see ``EventFeatures.novel``). Output up to the
    prompt's own length is not counted, and what is beyond it counts by the answer's
    share that the prompt did not supply (``added * added / answer``): a translation, a
    summary or a RAG answer restates what was sent, where a student model learns from
    what the teacher adds. Measured on the calibration split's retrieval apps, whose
    answers run about as long as their context: subtracting alone left their linked
    group taking 3.3M tokens a day, as much as a topic sweep's members each. Whatever
    the prompt held, ``HAUL_FLOOR`` of each answer counts: the adaptive attacker put
    12,000 characters of unrelated "context" before each question and was subtracted
    to nothing (two accounts took 5.4M tokens in 6 h, never acted on).

    A linked group's pooled haul is projected over at least
    ``CAMPAIGN_HAUL_MIN_SPAN_S`` (a quarter of an hour) instead of ``HAUL_MIN_SPAN_S``:
    the longer floor spares one person's burst, and a group of linked accounts is not
    one person.
    """

    group = "extraction"
    lo = 1e5
    hi = 1e6
    what = ""

    def new_state(self) -> list[float]:
        # first ts, last ts, tokens, requests, greedy (weighted as ``tokens``), greedy
        # as served (what the allowance is measured in); a pooled state (``merge``)
        # adds the span floor it is projected over.
        return [-1.0, 0.0, 0.0, 0, 0.0, 0.0]

    def counts(self, f: EventFeatures) -> bool:
        return True

    def weight_of(self, f: EventFeatures) -> float:
        """How much one taken token is worth (1 unless a subclass says otherwise)."""
        return 1.0

    def observe(self, state: list[float], f: EventFeatures) -> None:
        if not f.ok:
            return
        if state[0] < 0:
            state[0] = f.ts
        state[1] = f.ts
        state[3] += 1
        if self.counts(f):
            # The last user message's length (about 4 characters a token), not the
            # prompt's: a follow-up's history was the service's own earlier answers.
            asked = (f.raw or {}).get("chars", 4 * f.event.prompt_tokens) / 4.0
            out = f.event.completion_tokens
            if out > 0:
                added = max(0.0, out - asked * max(f.n, 1))
                # Weighted by the answer's share that the prompt did not supply, and
                # never under HAUL_FLOOR of the answer (see the class docstring).
                taken = max(added * added / out, HAUL_FLOOR * out)
                if (f.event.params or {}).get("temperature") == 0:
                    state[4] += taken * f.novel * self.weight_of(f)
                    state[5] += out * f.novel
                else:
                    state[2] += taken * f.novel * self.weight_of(f)

    def merge(self, states: list[Any]) -> Any:
        """Pooled: one operator's span and the summed haul."""
        live = [s for s in states if s[0] >= 0]
        if not live:
            return self.new_state()
        # No allowance for a linked group: a benchmark run is one account's, and
        # linked accounts splitting greedy harvest between them are not a harness.
        return [min(s[0] for s in live), max(s[1] for s in live),
                sum(s[2] + s[4] for s in live), sum(s[3] for s in live), 0.0, 0.0,
                CAMPAIGN_HAUL_MIN_SPAN_S]

    def value(self, state: list[float]) -> float | None:
        if state[3] < 5:
            return None
        floor = state[6] if len(state) > 6 else HAUL_MIN_SPAN_S
        days = max(state[1] - state[0], floor) / 86400.0
        # The allowance is counted in tokens as served, and what lies beyond it keeps
        # its weight: a padded prompt lowers the weight, not the allowance's size (the
        # adaptive attacker padded greedy requests and took four allowances' worth).
        served = state[5]
        beyond = state[4] * (served - GREEDY_ALLOWANCE_TOKENS) / served \
            if served > GREEDY_ALLOWANCE_TOKENS else 0.0
        return (state[2] + beyond) / days

    def strength(self, value: float, baseline: Baseline | None) -> float:
        return ramp(math.log10(max(value, 1.0)), math.log10(self.lo), math.log10(self.hi))

    def explain(self, value: float, baseline: Baseline | None) -> str:
        return (f"{value:,.0f} {self.what} per day of activity (over at least "
                f"{HAUL_MIN_SPAN_S / 3600:.0f} h, greedy tokens beyond the first "
                f"{GREEDY_ALLOWANCE_TOKENS:,}; counts from {self.lo:,.0f}/day, full at "
                f"{self.hi:,.0f}/day)")


@register_signal
class TraceHaulSignal(_Haul):
    """Reasoning-trace tokens taken per day: completion tokens of requests whose prompt
    (or system message) asks for reasoning or dataset rows, on new prompts."""

    name = "trace_haul"
    weight = 0.8
    # A student asking for worked steps all evening takes some 10-20k a day.
    lo, hi = 2e4, 4e5
    description = "reasoning-trace tokens taken per day on new prompts"
    what = "reasoning-trace tokens on new prompts"

    def counts(self, f: EventFeatures) -> bool:
        return f.elicits


@register_signal
class NovelOutputSignal(_Haul):
    """All completion tokens taken per day on new prompts (a student model's data)."""

    name = "novel_output"
    # Full only at ten times what one busy account takes (1.5M a day): a linked group
    # pooling 9M a day (the calibration split's topic sweep) is not the same evidence
    # as one account's day, as it was when the ramp ended at 1.5M and weighed 0.5.
    weight = 0.8
    lo, hi = 5e4, 1.5e7
    description = ("completion tokens taken per day on new prompts (soft labels count "
                   "more: a token with its top log-probabilities is a distribution)")
    what = "completion tokens on new prompts (log-probability tokens weighted up)"

    def weight_of(self, f: EventFeatures) -> float:
        # top_logprobs = k carries k alternatives per token: worth several samples.
        lp = int((f.raw or {}).get("logprobs") or 0)
        return 1.0 + min(max(lp - 1, 0), 20) / 5.0 if lp else 1.0


# Embedded prompts an account (or a linked group, pooled) needs before its prompt
# distribution is tested: fewer say more about one conversation than about the account.
MIN_SKETCH_PROMPTS = 20


@register_signal
class PromptDistributionSignal(_Builtin):
    """How far the account's prompts lie from real traffic's in embedding space: the
    unbiased squared MMD between its prompt embeddings and the shipped ShareGPT
    reference (``detection.sketch``), from a fixed-size sketch that pools over linked
    accounts (a campaign is tested on its members' prompts together).

    Suspicious when *far*: many prompts from a region real users rarely ask about (a
    templated sweep of one capability, synthetic problems). The threshold is set above
    every benign account and benign group of the evaluation's calibration split
    (``detection.calibration``, key ``signals.prompt_distribution``) and the reason
    quotes it; without that calibration the signal reports its value only. The other
    side (prompts spread exactly like the population's, as when sampled from a public
    corpus) is not used: a reseller's or a team's shared key looks just like that.
    """

    name = "prompt_distribution"
    group = "intent"
    weight = 0.35
    description = ("two-sample test of the prompts against real ShareGPT traffic in "
                   "embedding space (unbiased squared MMD, random Fourier features)")

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        from distillguard.detection.calibration import load_calibration

        # The pipeline sets the reference (``detection.sketch``) it maps prompts against.
        self.reference: Any = None
        cal = (load_calibration() or {}).get("signals", {}).get(self.name)
        self.calibration: dict[str, Any] | None = cal

    def new_state(self) -> list[Any]:
        # prompts; sum of [features, squared norm] (float64, ``PromptSketch.extended``)
        return [0, None]

    def observe(self, state: list[Any], f: EventFeatures) -> None:
        phi = f.sketch
        if phi is None:
            return
        if state[1] is None:
            state[1] = phi.copy()
        else:
            state[1] += phi
        state[0] += 1

    def merge(self, states: list[Any]) -> Any:
        """Pooled: the sketches add up (one operator's prompts)."""
        live = [s for s in states if s[1] is not None]
        if not live:
            return self.new_state()
        return [sum(s[0] for s in live), np.sum([s[1] for s in live], axis=0)]

    def value(self, state: list[Any]) -> float | None:
        if self.reference is None or state[0] < MIN_SKETCH_PROMPTS:
            return None
        return self.reference.mmd2(state[0], state[1][:-1], float(state[1][-1]))

    def strength(self, value: float, baseline: Baseline | None) -> float:
        far = (self.calibration or {}).get("far")
        return ramp(value, far, 1.5 * far) if far else 0.0

    def explain(self, value: float, baseline: Baseline | None) -> str:
        text = (f"prompts' squared MMD to real ShareGPT traffic in embedding space "
                f"{value:.3f} (0: drawn alike)")
        cal = self.calibration
        if not cal or not cal.get("far"):
            return text + "; no calibrated threshold"
        return (text + f"; counts from {cal['far']:.3f}, set above every benign account "
                f"and group of the {cal.get('note', 'calibration split')}")
