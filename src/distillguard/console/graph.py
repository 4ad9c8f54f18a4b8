"""A campaign drawn as a graph: its members, and the shared evidence each one carries.

Each piece of evidence that ties two or more members (one address prefix with one user
agent, one repeated prompt template, one client fingerprint, one key-creation burst, one
autonomous system across prefixes when ``asn_table`` is set)
becomes a hub; a member links to every hub it shares. The buckets are the ones campaign
clustering links accounts by (``detection/campaigns.py``), read from the members'
profiles, so the picture shows why the accounts were put together.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from markupsafe import Markup

from distillguard.console import svg
from distillguard.detection.campaigns import (
    BURST_GAP_S,
    MIN_CLIENT_REPEATS,
    MIN_TEMPLATE_REPEATS,
    ROTATING_CHURN,
)

MAX_NODES = 48
MAX_HUBS = 12


def _buckets(gateway: Any, members: list[str]) -> dict[tuple[str, Any], list[str]]:
    detection = gateway.detection
    table = getattr(detection, "asn_table", None)
    buckets: dict[tuple[str, Any], list[str]] = defaultdict(list)
    by_system: dict[str, dict[str, str]] = defaultdict(dict)  # AS -> member -> prefix
    first_key: list[tuple[float, str]] = []
    for m in members:
        prof = detection.profile_of(m)
        if prof is not None:
            prefix, agent = prof.top(prof.prefixes), prof.top(prof.agents)
            if prefix and agent:
                buckets[("shared_infrastructure", f"{prefix} · {agent[:24]}")].append(m)
            system = table.lookup(prefix) if table is not None and prefix else None
            if system is not None:
                by_system[str(system)][m] = prefix
            for band, count in prof.bands.items():
                if count >= MIN_TEMPLATE_REPEATS:
                    buckets[("shared_template", band)].append(m)
            client = prof.top(prof.clients)
            if client is not None and prof.clients[client] >= MIN_CLIENT_REPEATS:
                buckets[("shared_client", client)].append(m)
        churn = next((r.value for r in detection.signals_of(m)
                      if r.signal == "client_churn"), None)
        if churn is not None and churn >= ROTATING_CHURN:
            buckets[("rotating_clients", "rotating")].append(m)
        keys = gateway.store.list_keys(m)
        if keys:
            first_key.append((min(k.created_at for k in keys), m))
    # One AS across several prefixes, as the campaign's shared_asn evidence counts it
    # (within one prefix, the shared-network hub says it already).
    for system, prefixes in by_system.items():
        if len(set(prefixes.values())) >= 2:
            buckets[("shared_asn", system)] = list(prefixes)
    first_key.sort()
    burst: list[str] = []
    last = None
    n = 0
    for t, m in first_key + [(float("inf"), "")]:
        if last is not None and t - last > BURST_GAP_S:
            if len(burst) >= 2:
                buckets[("key_burst", n)] = burst
                n += 1
            burst = []
        burst.append(m)
        last = t
    return buckets


_LABELS = {"shared_infrastructure": "same network + agent", "shared_template": "template",
           "shared_client": "client fingerprint", "key_burst": "key burst",
           "shared_asn": "one AS", "rotating_clients": "rotating proxies / agents"}


def campaign_graph(gateway: Any, view: dict[str, Any]) -> Markup:
    """The SVG graph of a campaign view (``queries.campaign_view``)."""
    members = view["members"][:MAX_NODES]
    buckets = {k: v for k, v in _buckets(gateway, members).items() if len(v) >= 2}
    # The buckets that tie the most members, a few of each kind at most.
    ranked = sorted(buckets.items(), key=lambda kv: -len(kv[1]))
    kept: list[tuple[tuple[str, Any], list[str]]] = []
    per_kind: dict[str, int] = defaultdict(int)
    for key, accts in ranked:
        if per_kind[key[0]] < 3 and len(kept) < MAX_HUBS:
            kept.append((key, accts))
            per_kind[key[0]] += 1
    hubs, edges = [], []
    for i, ((kind, value), accts) in enumerate(kept):
        label = _LABELS[kind]
        if kind in ("shared_infrastructure", "shared_asn"):
            label = str(value)
        elif kind == "shared_template":
            label = f"template #{i + 1}"
        hub = f"h{i}"
        hubs.append((hub, kind, f"{label} ({len(accts)} accounts)"))
        edges += [(a, hub) for a in accts]
    actions = {m["account"]: (m["action"] or {}).get("kind") for m in view["member_actions"]}
    core = set(view.get("core") or [])
    nodes = [(m, " ".join(filter(None, ["core" if m in core else "edge-member",
                                        actions.get(m) or ""]))) for m in members]
    return svg.link_graph(nodes, hubs, edges)
