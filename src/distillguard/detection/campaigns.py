"""Campaigns: accounts that each look clean but act together.

Each account keeps a small ``Profile`` (bounded): its most used /24 (IPv4) or /48 (IPv6)
address prefixes and user agents, the template LSH bands it repeats, a MinHash of its
active minutes, and its topic histogram. ``find_campaigns`` then

1. links accounts that share a strong bucket: a repeated prompt template or wrapper
   (the same first or last words around varying questions), the same (address prefix,
   user agent) pair, or a key-creation burst (keys created within
   ``BURST_GAP_S`` of each other in a run of at least ``MIN_MEMBERS`` accounts) with the
   same user agent, by union-find over inverted indices (cost linear in accounts; a
   bucket shared by more than half of all accounts says nothing and is skipped);
2. for each group of at least ``MIN_MEMBERS``, adds the evidence of a shared client
   fingerprint (user agent and exact sampling parameters), a shared autonomous system
   across different prefixes (with an ``asn_table``), members that each rotate their
   address and agent (a proxy pool), synchronised timing (active-minute MinHash
   agreement) and complementary coverage (the union of the members' topics is much
   more even than each member's own; reported, weight 0);
3. scores it: ``link`` (noisy-OR of the evidence kinds) times the pooled harvest score
   of the members (each signal's strength averaged over members, weighted by events;
   volume as the members' summed rate against the per-account population baseline).
4. judges apart the established members (keys older than ``ESTABLISHED_S``) that only
   copyable evidence ties to the rest (``HARD_KINDS``): the campaign's risk does not
   reach them, and those tied to each other by evidence no outsider can copy form their
   own campaign, scored on their own traffic. Otherwise a newcomer sending an honest
   app's template with its client would lend the app its risk (``bench/framing.py``).
   One address prefix is not such evidence (a cloud /24 can be rented beside an app's
   servers: ``bench/framing.py --rent``), and no such tie joins an established account
   to a new one.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import ipaddress
import math
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from distillguard.detection.signals import ESTABLISHED_S, GROUPS, Baseline, EventFeatures

MIN_MEMBERS = 3
# Keys created closer than this (or, where sign-ups are rare, closer than a twentieth of
# the mean gap between sign-ups, up to BURST_GAP_MAX_S) form a burst: a swarm that
# creates its keys over a quarter of an hour is still one burst on a quiet service.
BURST_GAP_S = 120.0
BURST_GAP_MAX_S = 900.0
# Bottom-k sketch of active minutes: the k smallest minute hashes estimate Jaccard.
_TIMING_K = 32
# A client fingerprint (agent + exact parameters) is weak: every user of one app with
# default settings shares it; it counts only next to other evidence.
LINK_WEIGHTS = {"shared_template": 0.6, "shared_infrastructure": 0.5, "key_burst": 0.5,
                "shared_signup": 0.6, "shared_client": 0.3, "synchronised_timing": 0.3,
                # Reported, not scored (see ``_score``).
                "complementary_coverage": 0.0, "shared_asn": 0.25,
                "rotating_clients": 0.4}
# A member whose share of requests from a new (address prefix, user agent) pair is at
# least this rotates them (``builtin.ClientChurnSignal``).
ROTATING_CHURN = 0.8
# The user agent a key burst's rotating members are bucketed by (``find_campaigns``).
ROTATING_AGENT = "\x00rotating"
# Evidence an outsider cannot put on someone else's account: keys made in one burst or
# one sign-up. A template, a client fingerprint, an autonomous system and active
# minutes can be copied from an honest app (a framework's default prompt, a popular SDK,
# a cloud region), so an attacker copying them links itself to that app
# (``bench/framing.py``). So can one address prefix: a cloud /24 can be rented beside
# the app's servers (``--rent``: the app was refused with the framers, also when their
# accounts were as old as the app's). Members that each rotate are tied too: an honest
# account does not rotate because an attacker does.
HARD_KINDS = ("key_burst", "shared_signup")
# ``ESTABLISHED_S`` (``signals``): a group of established accounts tied to the rest of a
# campaign only by copyable evidence is judged apart (``_apart``), so a newcomer copying
# their template cannot lend them its risk.
# One autonomous system is weaker than one /24: a large ISP or cloud carries many
# honest users. So, like a client fingerprint, it never pulls an account into a group:
# it ties together members that other evidence grouped and that send from different
# prefixes of one AS (a swarm rotating its /24s inside one provider).
# Repeats of one template band / wrapper, or one client fingerprint, before they link.
MIN_TEMPLATE_REPEATS = 3
MIN_CLIENT_REPEATS = 5


def network_prefix(addr: str | None) -> str | None:
    """The address's /24 (IPv4) or /48 (IPv6) network, None if it is not an address."""
    if not addr:
        return None
    return _network(addr)


# Parsing dominated scoring; clients repeat their addresses. Bounded, so an address
# flood grows nothing.
@functools.lru_cache(maxsize=65536)
def _network(addr: str) -> str | None:
    # Dotted IPv4 without leading zeros, the common case, without ``ipaddress`` (50 us a
    # parse, paid on every new address of a rotating swarm); anything else goes through it.
    parts = addr.split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3
                               and (p == "0" or p[0] != "0") and int(p) <= 255
                               for p in parts):
        return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None  # e.g. "invalid": the gateway could not trust what it was given
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))


def _bump(table: dict[Any, int], key: Any, cap: int) -> None:
    """Misra-Gries heavy hitters: at most ``cap`` keys, frequent ones survive."""
    count = table.get(key)
    if count is not None:
        table[key] = count + 1
    elif len(table) < cap:
        table[key] = 1
    else:
        _decrement(table)


def _decrement(table: dict[Any, int]) -> None:
    """The Misra-Gries step for a key that finds the table full: every count drops by
    one and the keys that reach 0 go."""
    for k in list(table):
        table[k] -= 1
        if table[k] <= 0:
            del table[k]


class Profile:
    """What campaign clustering needs of one account, in bounded memory."""

    __slots__ = ("prefixes", "agents", "clients", "bands", "minutes", "last_minute",
                 "topics", "sketch")

    def __init__(self) -> None:
        self.prefixes: dict[str, int] = {}
        self.agents: dict[str, int] = {}
        self.clients: dict[tuple[str, int], int] = {}  # (agent, params key) -> count
        self.bands: dict[int, int] = {}  # template bands and wrapper hashes -> count
        self.minutes = 0
        self.last_minute = -1
        self.topics: dict[int, int] = {}
        self.sketch: list[int] = []  # sorted, at most _TIMING_K minute hashes

    def observe(self, f: EventFeatures) -> None:
        e = f.event
        p = network_prefix(e.client_addr)
        if p:
            _bump(self.prefixes, p, 4)
        if e.user_agent:
            _bump(self.agents, e.user_agent[:200], 4)
            _bump(self.clients, (e.user_agent[:200], f.params_key), 4)
        # ``_bump`` inlined: a dozen bands per event made it the hottest call of scoring.
        bands = self.bands
        for b in (*f.bands, *f.wrappers):
            count = bands.get(b)
            if count is not None:
                bands[b] = count + 1
            elif len(bands) < 64:
                bands[b] = 1
            else:
                _decrement(bands)
        if f.topic >= 0:
            self.topics[f.topic] = self.topics.get(f.topic, 0) + 1
        minute = int(f.ts // 60)
        if minute != self.last_minute:
            self.last_minute = minute
            self.minutes += 1
            h = zlib.crc32(minute.to_bytes(8, "little"))
            sketch = self.sketch
            if len(sketch) < _TIMING_K or h < sketch[-1]:
                i = bisect.bisect_left(sketch, h)
                if i == len(sketch) or sketch[i] != h:
                    sketch.insert(i, h)
                    del sketch[_TIMING_K:]

    def observe_client(self, f: EventFeatures) -> None:
        """A refused request: it still shows where the account sends from."""
        e = f.event
        p = network_prefix(e.client_addr)
        if p:
            _bump(self.prefixes, p, 4)
        if e.user_agent:
            _bump(self.agents, e.user_agent[:200], 4)

    def top(self, table: dict[Any, int]) -> Any:
        return max(table.items(), key=lambda kv: kv[1])[0] if table else None

    def timing_signature(self) -> list[int] | None:
        """Bottom-k sketch of the active minutes (None under 10 active minutes)."""
        return self.sketch if self.minutes >= 10 else None


def sketch_jaccard(a: list[int], b: list[int]) -> float:
    """Jaccard estimate of two sets from their bottom-k sketches."""
    k = min(_TIMING_K, len(a), len(b))
    union = sorted(set(a) | set(b))[:k]
    both = set(a) & set(b)
    return sum(1 for h in union if h in both) / k if k else 0.0


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One reason accounts are linked: its kind, how strong, and what an analyst checks."""

    kind: str
    strength: float
    message: str


@dataclasses.dataclass(frozen=True)
class Campaign:
    """A group of accounts acting together. ``risk`` in [0, 1] = ``link`` x pooled harvest."""

    campaign_id: str
    members: list[str]
    evidence: list[Evidence]
    link: float
    harvest: float
    risk: float
    events: int
    groups: dict[str, float]
    # Members tied to the others by at least two kinds of evidence of their own. Only
    # they carry the campaign's risk: a real user who merely asked a question that a
    # swarm also asked shares one template bucket with it, and nothing else.
    core: list[str] = dataclasses.field(default_factory=list)
    # Established members tied to the others only by copyable evidence (``HARD_KINDS``):
    # judged apart, as their own campaign when they are enough to form one.
    apart: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _entropy(counts: dict[int, int], topics: int) -> float:
    total = sum(counts.values())
    if total == 0 or topics < 2:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values()) / math.log(topics)


def find_campaigns(members: dict[str, tuple[int, Profile, dict[str, tuple[Any, float, float]]]],
                   key_times: dict[str, float], baselines: dict[str, Baseline], *,
                   n_topics: int, combine: Callable[[dict[str, float]], float],
                   signals: list[Any] | None = None,
                   states: dict[str, list[Any]] | None = None, min_events: int = 20,
                   signup: dict[str, list[Any]] | None = None,
                   asn: Callable[[str], Any] | None = None) -> list[Campaign]:
    """Cluster accounts into campaigns (see the module docstring).

    ``members`` maps account -> (events, profile, {signal name: (signal, value,
    strength)}); ``key_times`` account -> its first key's creation time. With
    ``signals`` and ``states`` (account -> per-signal states), the campaign is scored
    as one account holding the members' pooled traffic, for every signal that can
    ``merge``. ``signup`` maps account -> the sign-up keys it shares (e-mail domain
    and address prefix, client fingerprint): accounts made together are linked.
    ``asn`` maps an address prefix to its autonomous system (``asn.AsnTable.lookup``).
    """
    buckets: dict[tuple[str, Any], list[str]] = defaultdict(list)
    for name, keys in (signup or {}).items():
        if name in members:
            for key in keys:
                buckets[("shared_signup", key)].append(name)
    for name, (_, prof, _) in members.items():
        prefix, agent = prof.top(prof.prefixes), prof.top(prof.agents)
        if prefix and agent:
            buckets[("shared_infrastructure", (prefix, agent))].append(name)
        for band, count in prof.bands.items():
            if count >= MIN_TEMPLATE_REPEATS:
                buckets[("shared_template", band)].append(name)
    # Key-creation bursts: runs of keys created close together, split by user agent.
    # A member that rotates its agent has no agent of its own to split by (its most
    # used one is whichever of its list came up most): the rotating members of a burst
    # are one bucket.
    rotating = _rotating_members(members)
    timed = sorted((t, a) for a, t in key_times.items() if a in members)
    gap = burst_gap([t for t, _ in timed])
    run: list[str] = []
    last = -math.inf
    burst = 0
    for t, a in timed + [(math.inf, "")]:
        if t - last > gap:
            if len(run) >= MIN_MEMBERS:
                for acct in run:
                    agent = ROTATING_AGENT if acct in rotating \
                        else members[acct][1].top(members[acct][1].agents)
                    buckets[("key_burst", (burst, agent))].append(acct)
                burst += 1
            run = []
        run.append(a)
        last = t
    # "Half the population" counts every account with a key, not only those seen so
    # far: a swarm that is most of the recently active accounts is still a few of all.
    limit = max(MIN_MEMBERS, max(len(members), len(key_times)) // 2)
    now = max((p.last_minute * 60.0 for _, p, _ in members.values()), default=0.0)
    uf = _UnionFind()
    # The same links, only those no outsider can copy: they split a group into the
    # parts that may be judged apart (``_apart``). They never tie an established account
    # to a new one (``_established``): a sign-up's e-mail domain with its address prefix
    # could be taken again from a rented address by an account made today.
    hard = _UnionFind()
    kinds_of: dict[str, set[str]] = defaultdict(set)
    for (kind, _), accts in buckets.items():
        if len(accts) < 2 or len(accts) > limit:
            continue
        for a in accts[1:]:
            uf.union(accts[0], a)
        if kind in HARD_KINDS:
            sides: dict[bool, str] = {}
            for a in accts:
                first = sides.setdefault(_established(a, key_times, now), a)
                if first != a:
                    hard.union(first, a)
        for a in accts:
            kinds_of[a].add(kind)
    _merge_by_client(uf, kinds_of, members, limit)
    groups: dict[str, list[str]] = defaultdict(list)
    for a in kinds_of:
        groups[uf.find(a)].append(a)

    as_of = _systems(members, asn, limit) if asn is not None else {}
    index: dict[str, list[tuple[str, list[str]]]] | None = None  # built when first needed
    campaigns = []
    for accts in groups.values():
        if len(accts) < MIN_MEMBERS:
            continue
        accts.sort()
        campaign = _score(accts, members, kinds_of, baselines, n_topics, combine,
                          pooled_states(accts, signals, states, min_events), as_of,
                          rotating=rotating)
        parts = _apart(accts, hard, key_times, rotating, now)
        if parts:
            apart = {a for part in parts for a in part}
            campaign = dataclasses.replace(
                campaign, core=[a for a in campaign.core if a not in apart],
                apart=sorted(apart))
            for part in parts:
                if len(part) >= MIN_MEMBERS:
                    if index is None:
                        index = _bucket_index(buckets, limit)
                    inner = _kinds_within(part, index)
                    campaigns.append(_score(part, members, inner, baselines, n_topics,
                                            combine, pooled_states(part, signals, states,
                                                                   min_events), as_of,
                                            rotating=rotating))
        campaigns.append(campaign)
    campaigns.sort(key=lambda c: (-c.risk, -len(c.members)))
    return campaigns


def _hard_parts(accts: list[str], hard: _UnionFind,
                rotating: frozenset[str]) -> list[list[str]]:
    """The group split by the evidence no outsider can copy (``hard``: the union of
    ``HARD_KINDS`` buckets), its members that each rotate (``rotating``) joined into
    one part; each part sorted."""
    parts: dict[Any, list[str]] = defaultdict(list)
    for a in accts:
        parts[hard.find(a)].append(a)
    rotating_here = [a for a in accts if a in rotating]
    if len(rotating_here) >= MIN_MEMBERS:
        roots = {hard.find(a) for a in rotating_here}
        joined = [a for r in roots for a in parts.pop(r)]
        parts[None] = joined
    return [sorted(p) for p in parts.values()]


def _apart(accts: list[str], hard: _UnionFind, key_times: dict[str, float],
           rotating: frozenset[str], now: float) -> list[list[str]]:
    """The parts of the group (``_hard_parts``) whose every key is established: tied to
    the rest only by evidence an outsider can copy, they are judged apart. None when the
    group is one part: then nothing ties it by copyable evidence alone."""
    parts = _hard_parts(accts, hard, rotating)
    if len(parts) < 2:
        return []
    return [p for p in parts if all(_established(a, key_times, now) for a in p)]


def _established(account: str, key_times: dict[str, float], now: float) -> bool:
    """Whether the account's first key is at least ``ESTABLISHED_S`` old."""
    made = key_times.get(account)
    return made is not None and now - made >= ESTABLISHED_S


def _bucket_index(buckets: dict[tuple[str, Any], list[str]],
                  limit: int) -> dict[str, list[tuple[str, list[str]]]]:
    """Account -> (kind, members) of each bucket that links it."""
    index: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for (kind, _), linked in buckets.items():
        if 2 <= len(linked) <= limit:
            for a in linked:
                index[a].append((kind, linked))
    return index


def _kinds_within(accts: list[str],
                  index: dict[str, list[tuple[str, list[str]]]]) -> dict[str, set[str]]:
    """Each member's evidence kinds counting only buckets it shares inside ``accts``."""
    inside = set(accts)
    kinds: dict[str, set[str]] = defaultdict(set)
    for a in accts:
        for kind, linked in index.get(a, ()):
            if any(b != a and b in inside for b in linked):
                kinds[a].add(kind)
    return kinds


def _systems(members: dict[str, Any], asn: Callable[[str], Any],
             limit: int) -> dict[str, tuple[Any, str]]:
    """Account -> (its autonomous system, its top prefix), for the accounts whose top
    prefix the table knows, leaving out any AS that more than ``limit`` accounts send
    from (as with buckets: shared by half the population, it says nothing)."""
    cache: dict[str, Any] = {}
    out: dict[str, tuple[Any, str]] = {}
    sizes: dict[Any, int] = defaultdict(int)
    for name, (_, prof, _) in members.items():
        prefix = prof.top(prof.prefixes)
        if not prefix:
            continue
        if prefix not in cache:
            cache[prefix] = asn(prefix)
        system = cache[prefix]
        if system is not None:
            out[name] = (system, prefix)
            sizes[system] += 1
    return {a: v for a, v in out.items() if sizes[v[0]] <= limit}


def burst_gap(times: list[float]) -> float:
    """The largest gap between key creations that still counts as one burst.

    A twentieth of the mean gap between sign-ups (their span over their number): a
    swarm's own tight gaps move the mean little, where they would drag a median down.
    """
    if len(times) < 2 * MIN_MEMBERS:
        return BURST_GAP_S
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    return max(BURST_GAP_S, min(BURST_GAP_MAX_S, mean_gap / 20.0))


def _merge_by_client(uf: _UnionFind, kinds_of: dict[str, set[str]],
                     members: dict[str, Any], limit: int) -> None:
    """Join groups that other evidence formed when they send with one client fingerprint.

    A fingerprint alone would join every user of one app with default settings, so it
    never adds an account that no other evidence linked; it only says that two linked
    groups (e.g. two bursts of one swarm's sign-ups) are the same operation.
    """
    by_client: dict[Any, list[str]] = defaultdict(list)
    for a in kinds_of:
        prof = members[a][1]
        client = prof.top(prof.clients)
        if client is not None and prof.clients[client] >= MIN_CLIENT_REPEATS:
            by_client[client].append(a)
    sizes: dict[str, int] = defaultdict(int)
    for a in kinds_of:
        sizes[uf.find(a)] += 1
    for accts in by_client.values():
        if len(accts) > limit:
            continue
        # Only groups that already have MIN_MEMBERS linked accounts each.
        big = sorted({r for r in map(uf.find, accts) if sizes[r] >= MIN_MEMBERS})
        for r in big[1:]:
            total = sizes[uf.find(big[0])] + sizes[r]
            uf.union(big[0], r)
            sizes[uf.find(big[0])] = total


def pooled_states(accts: list[str], signals: list[Any] | None,
                  states: dict[str, list[Any]] | None, min_events: int
                  ) -> dict[str, tuple[Any, float]] | None:
    """Signal name -> (signal, strength of the members' merged state), for the signals
    that can merge."""
    if not signals or not states:
        return None
    out = {}
    for i, signal in enumerate(signals):
        merge = getattr(signal, "merge", None)
        if not callable(merge):
            continue
        merged = merge([states[a][i] for a in accts if a in states])
        value = signal.value(merged)
        if value is not None:
            out[signal.name] = (signal, signal.strength(value, None))
    return out


def _score(accts: list[str], members: dict[str, Any], kinds_of: dict[str, set[str]],
           baselines: dict[str, Baseline], n_topics: int,
           combine: Callable[[dict[str, float]], float],
           pooled_strengths: dict[str, tuple[Any, float]] | None = None,
           as_of: dict[str, tuple[Any, str]] | None = None, *,
           rotating: frozenset[str] = frozenset()) -> Campaign:
    evidence = []
    for kind in ("shared_template", "shared_infrastructure", "key_burst", "shared_signup"):
        having = [a for a in accts if kind in kinds_of[a]]
        if having:
            share = len(having) / len(accts)
            evidence.append(Evidence(kind, LINK_WEIGHTS[kind] * share,
                                     _describe(kind, accts, members, having)))
    # A shared client fingerprint only adds to a group other evidence formed: alone it
    # would join every user of one browser with default settings.
    clients: dict[Any, int] = defaultdict(int)
    client_of: dict[str, Any] = {}
    for a in accts:
        prof = members[a][1]
        client = prof.top(prof.clients)
        if client is not None and prof.clients[client] >= MIN_CLIENT_REPEATS:
            clients[client] += 1
            client_of[a] = client
    own_kinds = {a: len(kinds_of[a]) for a in accts}
    if clients:
        client, count = max(clients.items(), key=lambda kv: kv[1])
        if count >= MIN_MEMBERS:
            for a in accts:
                if client_of.get(a) == client:
                    own_kinds[a] += 1
            share = count / len(accts)
            evidence.append(Evidence("shared_client", LINK_WEIGHTS["shared_client"] * share,
                                     f"{count} of {len(accts)} accounts send with the same "
                                     f"client and identical sampling parameters (user agent "
                                     f"{str(client[0])[:60]!r})"))
    if as_of:
        evidence += _shared_asn(accts, as_of, kinds_of, own_kinds)
    evidence += _rotating(accts, rotating, own_kinds)
    # Synchronised timing: mean MinHash agreement of active minutes across members.
    sigs = [members[a][1].timing_signature() for a in accts]
    sigs = [s for s in sigs if s is not None]
    if len(sigs) >= MIN_MEMBERS:
        # Against the first member: linear in members, enough to tell lockstep apart.
        first = sigs[0]
        agree = float(np.mean([sketch_jaccard(s, first) for s in sigs[1:]]))
        if agree >= 0.3:
            # Lockstep is each member's own evidence too: a swarm that rotates every
            # address and agent is still tied by its template and its shared minutes.
            # Only next to a shared template: an office shares a prefix, an agent and
            # its working hours, and that alone is no campaign.
            for a in accts:
                sig = members[a][1].timing_signature()
                if ("shared_template" in kinds_of[a] and sig is not None
                        and sketch_jaccard(sig, first) >= 0.3):
                    own_kinds[a] += 1
        if agree >= 0.3:
            evidence.append(Evidence("synchronised_timing", LINK_WEIGHTS["synchronised_timing"]
                                     * min(1.0, agree / 0.6),
                                     f"members are active in the same minutes (estimated "
                                     f"Jaccard {agree:.2f} of active minutes)"))
    # Complementary coverage: the union sweeps topics more evenly than members do.
    complementary = 0.0
    if n_topics:
        union: dict[int, int] = defaultdict(int)
        own = []
        for a in accts:
            topics = members[a][1].topics
            for t, c in topics.items():
                union[t] += c
            if sum(topics.values()) >= 5:
                own.append(_entropy(topics, n_topics))
        if own and sum(union.values()) >= 30:
            whole = _entropy(union, n_topics)
            gain = whole - float(np.mean(own))
            complementary = min(1.0, max(0.0, (gain - 0.1) / 0.2)) * (whole >= 0.7)
            if complementary > 0:
                evidence.append(Evidence(
                    "complementary_coverage", LINK_WEIGHTS["complementary_coverage"]
                    * complementary,
                    f"together the members cover the topic map with normalised entropy "
                    f"{whole:.2f}, each alone {np.mean(own):.2f} on average"))
    link = 1.0 - math.prod(1.0 - e.strength for e in evidence)

    # Pooled harvest: event-weighted mean strength of each signal over members.
    events = sum(members[a][0] for a in accts)
    pooled: dict[str, list[float]] = {}
    weights: dict[str, Any] = {}
    rates: dict[str, float] = defaultdict(float)
    for a in accts:
        n, _, readings = members[a]
        for name, (signal, value, strength) in readings.items():
            pooled.setdefault(name, [0.0, 0.0])
            pooled[name][0] += n * strength
            pooled[name][1] += n
            weights[name] = signal
            if signal.group == "volume" and name in ("request_rate", "output_rate"):
                rates[name] += value
    parts: dict[str, list[float]] = {g: [] for g in GROUPS}
    # Signals that merge are scored on the pooled traffic, as one account's would be:
    # forty members of twelve requests each are one operator of 480 requests.
    from_pool = pooled_strengths or {}
    for name, (signal, _) in from_pool.items():
        weights[name] = signal
        pooled.setdefault(name, [0.0, 0.0])
    for name, (total, n) in pooled.items():
        signal = weights[name]
        strength = total / n if n else 0.0
        if name in from_pool:
            strength = max(strength, from_pool[name][1])
        if name in rates:
            strength = max(strength, signal.strength(rates[name], baselines.get(name)))
        parts[signal.group].append(signal.weight * strength)
    # Complementary coverage is evidence an analyst reads, not a score: on the
    # calibration split (embeddings on) the benign group of linked retrieval apps, whose
    # users ask about everything, gained it as much as the topic sweep and rose from
    # 0.27 to 0.33, above where the sweep is refused; as ``coverage`` is for one account.
    parts["automation"].extend(e.strength for e in evidence if e.kind == "synchronised_timing")
    # Members each hiding where they send from (a new address and agent on nearly every
    # request) is intent as well as a tie: people and apps come back from a few places.
    # On the calibration split no benign group rotates; the topic sweep was refused
    # after 7 minutes instead of 9 with it.
    parts["intent"].extend(e.strength for e in evidence if e.kind == "rotating_clients")
    groups = {g: 1.0 - math.prod(1.0 - p for p in ps) for g, ps in parts.items()}
    harvest = combine(groups)
    risk = link * harvest if len(accts) >= MIN_MEMBERS else 0.0
    cid = "cmp_" + hashlib.sha256("\n".join(accts).encode()).hexdigest()[:10]
    core = [a for a in accts if own_kinds[a] >= 2]
    return Campaign(cid, accts, evidence, round(link, 4), round(harvest, 4), round(risk, 4),
                    events, {g: round(v, 4) for g, v in groups.items()}, core)


def _rotating(accts: list[str], rotating: frozenset[str],
              own_kinds: dict[str, int]) -> list[Evidence]:
    """Evidence that members each rotate where they send from (nearly every request
    from an address prefix and user agent the account had not used): one operator's
    rented proxies or agent list. Like a client fingerprint it only adds to a group
    other evidence formed, since a lone account may rotate for its own reasons."""
    here = [a for a in accts if a in rotating]
    if len(here) < MIN_MEMBERS:
        return []
    for a in here:
        own_kinds[a] += 1
    share = len(here) / len(accts)
    return [Evidence("rotating_clients", LINK_WEIGHTS["rotating_clients"] * share,
                     f"{len(here)} of {len(accts)} accounts send nearly every request "
                     f"from an address prefix and user agent they had not used before (a "
                     f"rotating proxy pool or agent list)")]


def _rotating_members(members: dict[str, Any]) -> frozenset[str]:
    """The accounts whose ``client_churn`` reaches ``ROTATING_CHURN`` (found once per
    ``find_campaigns``: the burst buckets, the evidence and the hard parts all read it)."""
    return frozenset(a for a, (_, _, readings) in members.items()
                     if (r := readings.get("client_churn")) is not None
                     and r[1] >= ROTATING_CHURN)


def _shared_asn(accts: list[str], as_of: dict[str, tuple[Any, str]],
                kinds_of: dict[str, set[str]], own_kinds: dict[str, int]) -> list[Evidence]:
    """Evidence that members send from one AS across different prefixes (none when they
    share one prefix only: shared_infrastructure says that already)."""
    by_system: dict[Any, list[str]] = defaultdict(list)
    for a in accts:
        if a in as_of:
            by_system[as_of[a][0]].append(a)
    if not by_system:
        return []
    system, inside = max(by_system.items(), key=lambda kv: (len(kv[1]), str(kv[0])))
    prefixes = sorted({as_of[a][1] for a in inside})
    if len(inside) < 2 or len(prefixes) < 2:
        return []
    for a in inside:
        # A member already tied by a shared prefix gains nothing new from its AS.
        if "shared_infrastructure" not in kinds_of[a]:
            own_kinds[a] += 1
    share = len(inside) / len(accts)
    shown = ", ".join(prefixes[:3]) + (", ..." if len(prefixes) > 3 else "")
    return [Evidence("shared_asn", LINK_WEIGHTS["shared_asn"] * share,
                     f"{len(inside)} of {len(accts)} accounts send from {system} across "
                     f"{len(prefixes)} different address prefixes ({shown})")]


def _describe(kind: str, accts: list[str], members: dict[str, Any],
              having: list[str]) -> str:
    """The evidence in words; ``having``: the members that show it (its example)."""
    n = len(having)
    if kind == "shared_template":
        return (f"{n} of {len(accts)} accounts repeat the same prompt template or wrapper "
                f"(MinHash LSH of masked prompts, or the same first / last six words)")
    if kind == "shared_infrastructure":
        prof = members[having[0]][1]
        return (f"{n} of {len(accts)} accounts send from the same address prefix and user "
                f"agent (e.g. {prof.top(prof.prefixes)}, "
                f"{str(prof.top(prof.agents))[:60]!r})")
    if kind == "shared_signup":
        return (f"{n} of {len(accts)} accounts signed up with the same client fingerprint "
                f"or the same e-mail domain from the same address prefix")
    return (f"{n} of {len(accts)} accounts had their first key created in one burst "
            f"(gaps under {BURST_GAP_S:.0f} s)")


