"""What analysts read and do, as plain functions over a running gateway.

The admin API (``gateway/analyst.py``) and the console (``console/``) both call these, so
the two can never disagree about an account's risk, a campaign or the audit log. They
are synchronous (run them in a thread) and never touch key plaintext or watermark keys:
keys are listed by id and prefix only.

Ranking every tracked account costs about 0.1 ms each (10 s at 100,000 accounts), so
``RiskIndex`` keeps the order of the last ranking and rebuilds it in the background once
it is older than twice its own build time (and at least five seconds); small populations
rebuild on every read and are always exact. The rows shown are always scored afresh.
``TrafficIndex`` keeps the overview chart's counts of settled buckets, so that a render
counts the last minutes of events instead of the day's.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from distillguard.policy.actions import KINDS, check_action

# Builds faster than this run inline, so small deployments and tests see exact order.
INLINE_BUILD_S = 0.05
# A slower build reruns in the background at most this often (and never more often than
# every five builds' time), so that it takes a bounded share of the CPU from the pages.
REBUILD_EVERY_S = 5.0


class QueryError(ValueError):
    """Bad analyst input; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One account's place in the ranking: what filtering needs, nothing more."""

    account: str
    risk: float
    events: int
    campaign: str | None
    signals: frozenset[str]


class RiskIndex:
    """Accounts ordered by risk, rebuilt when stale (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[Ranked] | None = None
        self._built_at = 0.0
        self._build_s = 0.0
        self._building = False

    @staticmethod
    def _build(detection: Any) -> list[Ranked]:
        out = []
        for name in detection.accounts():
            r = detection.account_risk(name)
            out.append(Ranked(r.account, r.risk, r.events, r.campaign,
                              frozenset(x.signal for x in r.reasons)))
        out.sort(key=lambda r: (-r.risk, -r.events, r.account))
        return out

    def _rebuild(self, detection: Any) -> None:
        started = self._clock()
        entries = self._build(detection)
        with self._lock:
            self._entries = entries
            self._build_s = self._clock() - started
            self._built_at = self._clock()
            self._building = False

    def entries(self, detection: Any) -> tuple[list[Ranked], float]:
        """The ranking and its age in seconds (0 when it was just built)."""
        with self._lock:
            entries, age = self._entries, self._clock() - self._built_at
            inline = entries is None or self._build_s < INLINE_BUILD_S
            stale = entries is None or inline or age > max(5 * self._build_s,
                                                           REBUILD_EVERY_S)
            start = stale and not inline and not self._building
            if start:
                self._building = True
        if inline:
            self._rebuild(detection)
            with self._lock:
                return list(self._entries or []), 0.0
        if start:
            threading.Thread(target=self._rebuild, args=(detection,), daemon=True,
                             name="distillguard-risk-index").start()
        return entries or [], age


def parts(gateway: Any) -> tuple[Any, Any]:
    """(detection, policy) of the gateway; RuntimeError when either is off."""
    detection = getattr(gateway, "detection", None)
    policy = getattr(gateway, "policy", None)
    if detection is None or policy is None:
        raise RuntimeError("detection and policy are not running in this gateway")
    return detection, policy


def _action(policy: Any, account: str) -> dict[str, Any] | None:
    action = policy.current_action(account)
    return action.to_dict() if action is not None else None


def ranked_page(gateway: Any, index: RiskIndex, *, offset: int = 0, limit: int = 50,
                min_risk: float = 0.0, action: str | None = None,
                campaign: str | None = None, signal: str | None = None) -> dict[str, Any]:
    """A page of accounts by risk, highest first, each with reasons and its action.

    Filters: ``action`` (a kind, or ``none`` for accounts without one), ``campaign`` (an
    id: its members), ``signal`` (accounts that signal contributes to). Returns
    ``{"data", "total", "offset", "limit", "ranked_age_s"}``.
    """
    detection, policy = parts(gateway)
    if action is not None and action not in (*KINDS, "none"):
        raise QueryError(f"'action' must be one of {', '.join(KINDS)} or none", "action")
    entries, age = index.entries(detection)
    acted = {a.account: a.kind for a in policy.actions()} if action is not None else {}
    members: set[str] | None = None
    if campaign is not None:
        c = detection.campaign(campaign)
        members = set(c.members) if c is not None else set()
    if min_risk <= 0 and action is None and members is None and signal is None:
        rows = entries  # unfiltered: no pass over every account
    else:
        rows = [e for e in entries
                if e.risk >= min_risk
                and (action is None or acted.get(e.account, "none") == action)
                and (members is None or e.account in members)
                and (signal is None or signal in e.signals)]
    page = rows[offset:offset + limit]
    data = [{**detection.account_risk(e.account).to_dict(),
             "action": _action(policy, e.account)} for e in page]
    return {"data": data, "total": len(rows), "offset": offset, "limit": limit,
            "ranked_age_s": round(age, 1)}


def account_view(gateway: Any, name: str) -> dict[str, Any] | None:
    """Risk, every signal with its baseline, campaign, action and key ids of an account;
    None when the account has neither activity nor an action."""
    detection, policy = parts(gateway)
    risk = detection.account_risk(name)
    action = _action(policy, name)
    if risk.events == 0 and action is None:
        return None
    campaign = detection.campaign(risk.campaign) if risk.campaign else None
    return {**risk.to_dict(),
            "signals": [dataclasses.asdict(s) for s in detection.signals_of(name)],
            "campaign": campaign.to_dict() if campaign else None,
            "action": action}


def account_keys(gateway: Any, name: str) -> list[dict[str, Any]]:
    """The account's keys: id, display prefix, name and times (the store has no more)."""
    return [dataclasses.asdict(k) for k in gateway.store.list_keys(name)]


def timeline(gateway: Any, name: str, limit: int) -> list[dict[str, Any]]:
    """The account's latest ``limit`` events, newest first (prompts when retained)."""
    store = gateway.store
    if hasattr(store, "recent_events"):
        return [e.to_dict() for e in store.recent_events(name, limit)]
    from collections import deque

    # A store without the indexed read: stream in time order, keep only the tail.
    tail = deque(store.iter_events(account=name), maxlen=limit)
    return [e.to_dict() for e in reversed(tail)]


def histogram(gateway: Any, *, since: float, until: float, buckets: int,
              account: str | None = None) -> dict[str, Any]:
    """Requests and distinct accounts per bucket over ``[since, until)``:
    ``{"start", "bucket_s", "requests": [...], "accounts": [...]}`` with every bucket."""
    bucket_s = max(1.0, (until - since) / buckets)
    requests, accounts = [0] * buckets, [0] * buckets
    rows = gateway.store.event_histogram(since=since, until=until, bucket_s=bucket_s,
                                         account=account)
    for b, n, a in rows:
        if 0 <= b < buckets:
            requests[b] += n
            accounts[b] = max(accounts[b], a)
    return {"start": since, "bucket_s": bucket_s, "requests": requests, "accounts": accounts}


# A chart bucket that ended this long ago is counted once and kept: an event reaches the
# store when its request ends (a stream may last minutes) and the writer has flushed.
SETTLE_S = 600.0
# Kept buckets are recounted in the background this often, for events written late
# (a replay or an import into a live store).
RECOUNT_S = 900.0
# A read that finds most of its window uncounted (the first ones) waits this long for the
# background count, then answers with what is counted and ``complete`` false.
FILL_WAIT_S = 0.15
# A read counts this many uncounted settled buckets itself, with its tail.
INLINE_BUCKETS = 2
_MAX_SCALES = 8


class TrafficIndex:
    """Requests and distinct accounts per bucket of the store's events, for charts of the
    whole gateway, counted incrementally.

    Buckets are aligned to multiples of their width, so a bucket that ended ``SETTLE_S``
    ago never moves and is counted once; each read re-counts only the buckets after it
    (the last minutes, not the day: counting a day of 200,000 events takes 0.3-0.5 s).
    The counts are the store's own, the same ``event_histogram`` ``histogram`` reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # bucket width -> bucket number -> (requests, distinct accounts)
        self._kept: dict[float, dict[int, tuple[int, int]]] = {}
        self._counted_at: dict[float, float] = {}
        self._filling: dict[float, threading.Thread] = {}

    def _count(self, store: Any, bucket_s: float, first: int, end: int, until: float
               ) -> dict[int, tuple[int, int]]:
        """Counts of buckets ``first`` .. ``end - 1`` (the last one cut at ``until``),
        every bucket present."""
        counts = {i: (0, 0) for i in range(first, end)}
        rows = store.event_histogram(since=first * bucket_s, until=until, bucket_s=bucket_s)
        for b, n, a in rows:
            # Clamped: float rounding may put an event on a boundary one bucket out.
            i = min(max(first + b, first), end - 1)
            requests, accounts = counts[i]
            counts[i] = (requests + n, max(accounts, a))
        return counts

    def _fill(self, store: Any, bucket_s: float, first: int, end: int) -> None:
        try:
            counts = self._count(store, bucket_s, first, end, end * bucket_s)
            with self._lock:
                self._kept.setdefault(bucket_s, {}).update(counts)
                self._counted_at[bucket_s] = self._clock()
        finally:
            with self._lock:
                self._filling.pop(bucket_s, None)

    def _start_fill(self, store: Any, bucket_s: float, first: int, end: int
                    ) -> threading.Thread:
        """The count of this width running now, started if none was (under the lock)."""
        if bucket_s in self._filling:
            return self._filling[bucket_s]
        thread = threading.Thread(target=self._fill, args=(store, bucket_s, first, end),
                                  daemon=True, name="distillguard-traffic-count")
        self._filling[bucket_s] = thread
        thread.start()
        return thread

    def _prepare(self, store: Any, bucket_s: float, first: int, last: int, settled: int
                 ) -> tuple[dict[int, tuple[int, int]], threading.Thread | None]:
        """The kept counts of this width and, when too many settled buckets are
        uncounted, the count of them (started if none runs). Every ``RECOUNT_S`` the
        kept ones are recounted in the background."""
        with self._lock:
            if bucket_s not in self._kept and len(self._kept) >= _MAX_SCALES:
                oldest = next(iter(self._kept))
                del self._kept[oldest]
                self._counted_at.pop(oldest, None)
            kept = self._kept.setdefault(bucket_s, {})
            for i in [i for i in kept if not first <= i <= last]:
                del kept[i]
            missing = [i for i in range(first, settled) if i not in kept]
            started = None
            if len(missing) > INLINE_BUCKETS:
                started = self._start_fill(store, bucket_s, first, settled)
            elif self._clock() - self._counted_at.get(bucket_s, self._clock()) > RECOUNT_S:
                self._start_fill(store, bucket_s, first, settled)
            self._counted_at.setdefault(bucket_s, self._clock())
        return kept, started

    @staticmethod
    def _span(gateway: Any, window: float, buckets: int, until: float | None
              ) -> tuple[float, float, int, int, int]:
        now = until if until is not None else getattr(gateway, "clock", time.time)()
        bucket_s = max(1.0, window / buckets)
        last = math.floor(now / bucket_s)
        settled = min(math.floor((now - SETTLE_S) / bucket_s), last + 1)  # exclusive
        return now, bucket_s, last - buckets + 1, last, settled

    def warm(self, gateway: Any, *, window: float, buckets: int) -> None:
        """Start counting the window's settled buckets in the background unless they are
        counted (the console does at log-in, so that the overview finds them counted)."""
        _, bucket_s, first, last, settled = self._span(gateway, window, buckets, None)
        self._prepare(gateway.store, bucket_s, first, last, settled)

    def histogram(self, gateway: Any, *, window: float, buckets: int,
                  until: float | None = None) -> dict[str, Any]:
        """The ``buckets`` aligned buckets of ``window / buckets`` seconds that end with
        the one holding ``until`` (default: the gateway's clock now), as ``histogram``
        returns them, plus ``complete``: false while the first count is still running
        (uncounted buckets read 0). A read waits for that count up to ``FILL_WAIT_S``."""
        store = gateway.store
        now, bucket_s, first, last, settled = self._span(gateway, window, buckets, until)
        kept, wait = self._prepare(store, bucket_s, first, last, settled)
        if wait is not None:
            wait.join(FILL_WAIT_S)
        with self._lock:
            missing = [i for i in range(first, settled) if i not in kept]
            counts = dict(kept)
        tail_from = settled if len(missing) > INLINE_BUCKETS else min(missing, default=settled)
        tail_from = max(tail_from, first)  # a short window may have no settled bucket
        if tail_from <= last:
            fresh = self._count(store, bucket_s, tail_from, last + 1, now)
            counts.update(fresh)
            with self._lock:
                kept.update((i, c) for i, c in fresh.items() if i < settled)
        series = [counts.get(i, (0, 0)) for i in range(first, last + 1)]
        return {"start": first * bucket_s, "bucket_s": bucket_s,
                "requests": [n for n, _ in series], "accounts": [a for _, a in series],
                "complete": all(i in counts for i in range(first, last + 1))}


def campaigns(gateway: Any, *, offset: int = 0, limit: int | None = None
              ) -> list[dict[str, Any]]:
    """Campaigns of the last detection round, highest risk first (``limit`` of them
    from ``offset``; all by default)."""
    detection, _ = parts(gateway)
    found = detection.campaigns()
    end = None if limit is None else offset + limit
    return [c.to_dict() for c in found[offset:end]]


def campaign_summaries(gateway: Any, *, offset: int = 0, limit: int = 50
                       ) -> list[dict[str, Any]]:
    """A page of campaigns as lists show them: sizes instead of member lists (a
    campaign may hold thousands of accounts; copying them costs a list its speed)."""
    detection, _ = parts(gateway)
    return [{"campaign_id": c.campaign_id, "risk": c.risk, "link": c.link,
             "harvest": c.harvest, "events": c.events, "size": len(c.members),
             "core_size": len(c.core), "evidence": [e.kind for e in c.evidence]}
            for c in detection.campaigns()[offset:offset + limit]]


def campaign_count(gateway: Any) -> int:
    """How many campaigns the last detection round found."""
    detection, _ = parts(gateway)
    return len(detection.campaigns())


def campaign_view(gateway: Any, campaign_id: str) -> dict[str, Any] | None:
    """A campaign with each member's action, or None when no such campaign."""
    detection, policy = parts(gateway)
    c = detection.campaign(campaign_id)
    if c is None:
        return None
    members = [{"account": m, "action": _action(policy, m)} for m in c.members]
    return {**c.to_dict(), "member_actions": members}


def actions(gateway: Any) -> list[dict[str, Any]]:
    """Every action in force."""
    _, policy = parts(gateway)
    return [a.to_dict() for a in policy.actions()]


def set_action(gateway: Any, name: str, kind: Any, *, reason: Any, analyst: str,
               ttl: float | None = None, rate_factor: Any = None) -> dict[str, Any]:
    """Set the account's action as ``analyst:NAME``; admission applies it on the next
    request. QueryError naming the field for bad input."""
    _, policy = parts(gateway)
    if kind not in KINDS:
        raise QueryError(f"'kind' must be one of {', '.join(KINDS)}", "kind")
    if not isinstance(reason, str) or not reason.strip():
        raise QueryError("'reason' must be a non-empty string", "reason")
    if rate_factor is not None and (isinstance(rate_factor, bool)
                                    or not isinstance(rate_factor, (int, float))):
        raise QueryError("'rate_factor' must be a number", "rate_factor")
    factor = None if rate_factor is None else float(rate_factor)
    try:
        check_action(kind, factor)
    except ValueError as exc:
        raise QueryError(str(exc), "rate_factor") from None
    action = policy.set_action(name, kind, reason=reason.strip(), author=f"analyst:{analyst}",
                               ttl=ttl, rate_factor=factor)
    row: dict[str, Any] = action.to_dict()
    return row


def lift(gateway: Any, name: str, *, analyst: str, reason: str) -> dict[str, Any] | None:
    """Lift the account's action as ``analyst:NAME``; None when it had none."""
    _, policy = parts(gateway)
    lifted = policy.lift(name, author=f"analyst:{analyst}", reason=reason)
    return lifted.to_dict() if lifted is not None else None


def audit(gateway: Any, *, account: str | None = None, limit: int = 100
          ) -> list[dict[str, Any]]:
    """The audit log, newest first: who did what to which account, when and why."""
    _, policy = parts(gateway)
    return [e.to_dict() for e in policy.audit(account=account, limit=limit)]


def acted_since(gateway: Any, since: float, limit: int = 5000) -> dict[str, int]:
    """Accounts acted on (set, by rule or analyst) since ``since``, counted by kind
    (each account once per kind; reads at most ``limit`` audit entries)."""
    _, policy = parts(gateway)
    seen: dict[str, set[str]] = {}
    for e in policy.audit(limit=limit):
        if e.ts < since:
            break
        if e.op == "set" and e.kind:
            seen.setdefault(e.kind, set()).add(e.account)
    return {k: len(v) for k, v in sorted(seen.items(), key=lambda kv: -len(kv[1]))}


def signup_funnel(gateway: Any, since: float) -> dict[str, Any] | None:
    """How far the sign-ups since ``since`` got (``SignupService.funnel``); None when this
    gateway runs no sign-up store."""
    signup = getattr(gateway, "signup", None)
    if signup is None or signup.db is None:
        return None
    funnel: dict[str, Any] = signup.funnel(since)
    return funnel


def traffic_index(app: Any) -> TrafficIndex:
    """The app's one ``TrafficIndex`` (on ``app.state``)."""
    index = getattr(app.state, "traffic_index", None)
    if index is None:
        index = app.state.traffic_index = TrafficIndex()
    return index


def risk_index(app: Any) -> RiskIndex:
    """The app's one ``RiskIndex`` (on ``app.state``), shared by the API and the console."""
    index = getattr(app.state, "risk_index", None)
    if index is None:
        index = app.state.risk_index = RiskIndex()
    return index
