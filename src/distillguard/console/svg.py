"""Charts as inline SVG strings: a time series and a graph of linked accounts.

Inline SVG needs no script, no CDN and no build step, scales with the page (``viewBox``)
and stays readable on a phone. Every label is escaped: account names come from users.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape
from urllib.parse import quote

from markupsafe import Markup

SERIES_COLOURS = ("#2563eb", "#d97706", "#059669", "#dc2626")


def _clock(ts: float, span: float) -> str:
    fmt = "%H:%M:%S" if span <= 900 else "%H:%M" if span <= 2 * 86400 else "%m-%d"
    return time.strftime(fmt, time.gmtime(ts))


def time_series(start: float, bucket_s: float, series: Sequence[tuple[str, Sequence[int]]],
                *, width: int = 720, height: int = 220, title: str = "") -> Markup:
    """A line chart of integer series sharing one time axis (UTC), each with its own
    scale on its own side when there are two."""
    n = max((len(v) for _, v in series), default=0)
    pad_l, pad_r, pad_t, pad_b = 48, 48, 28, 28
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" '
             f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">']
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" class="plot"/>')
    span = bucket_s * n
    for i in range(5):
        x = pad_l + w * i / 4
        ts = start + span * i / 4
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + h}" '
                     f'class="grid"/><text x="{x:.1f}" y="{height - 8}" class="tick" '
                     f'text-anchor="middle">{_clock(ts, span)}</text>')
    legend_x = pad_l
    for k, (label, values) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        top = max(max(values, default=0), 1)
        side_x, anchor = (pad_l - 6, "end") if k == 0 else (pad_l + w + 6, "start")
        if k < 2:
            parts.append(f'<text x="{side_x}" y="{pad_t + 10}" class="tick" fill="{colour}" '
                         f'text-anchor="{anchor}">{top:,}</text><text x="{side_x}" '
                         f'y="{pad_t + h}" class="tick" text-anchor="{anchor}">0</text>')
        if n:
            step = w / max(n - 1, 1)
            points = " ".join(f"{pad_l + i * step:.1f},{pad_t + h - h * v / top:.1f}"
                              for i, v in enumerate(values))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                         f'stroke-width="2" stroke-linejoin="round"/>')
        parts.append(f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{legend_x + 16}" y="18" class="legend">{escape(label)} '
                     f'(total {sum(values):,})</text>' if k == 0 else
                     f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{legend_x + 16}" y="18" class="legend">{escape(label)} '
                     f'(peak {max(values, default=0):,})</text>')
        legend_x += 16 + 8 * (len(label) + 16)
    parts.append("</svg>")
    return Markup("".join(parts))


def link_graph(accounts: Sequence[tuple[str, str]], hubs: Sequence[tuple[str, str, str]],
               edges: Sequence[tuple[str, str]], *, size: int = 560) -> Markup:
    """Accounts (name, css class) on an outer ring, evidence hubs (id, kind, label) on an
    inner ring, an edge for each account that shares a hub's evidence. Account nodes link
    to their pages."""
    cx = cy = size / 2
    # Room outside the ring for labels of up to 18 characters.
    r_out, r_in = size / 2 - 105, size / 2 - 200
    pos: dict[str, tuple[float, float]] = {}
    for i, (name, _) in enumerate(accounts):
        a = 2 * math.pi * i / max(len(accounts), 1) - math.pi / 2
        pos["a:" + name] = (cx + r_out * math.cos(a), cy + r_out * math.sin(a))
    for i, (hub, _, _) in enumerate(hubs):
        a = 2 * math.pi * i / max(len(hubs), 1) - math.pi / 2 + 0.3
        r = r_in if len(hubs) > 1 else 0
        pos["h:" + hub] = (cx + r * math.cos(a), cy + r * math.sin(a))
    parts = [f'<svg viewBox="0 0 {size} {size}" class="graph" role="img" '
             f'aria-label="accounts linked by shared evidence">']
    for acct, hub in edges:
        (x1, y1), (x2, y2) = pos["a:" + acct], pos["h:" + hub]
        kind = next(k for h, k, _ in hubs if h == hub)
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     f'class="edge {escape(kind)}"/>')
    for hub, kind, label in hubs:
        x, y = pos["h:" + hub]
        # The whole label is in the hub's title; the text says where it was cut.
        shown = label if len(label) <= 28 else label[:27] + "…"
        parts.append(f'<g class="hub {escape(kind)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="9"/>'
                     f'<title>{escape(label)}</title><text x="{x:.1f}" y="{y - 13:.1f}" '
                     f'text-anchor="middle">{escape(shown)}</text></g>')
    for name, cls in accounts:
        x, y = pos["a:" + name]
        a = math.atan2(y - cy, x - cx)
        tx, ty = x + 14 * math.cos(a), y + 14 * math.sin(a) + 4
        anchor = "start" if math.cos(a) > 0.2 else "end" if math.cos(a) < -0.2 else "middle"
        parts.append(f'<a href="/console/accounts/{quote(name, safe="")}"><g class="node {cls}">'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7"/><title>{escape(name)}</title>'
                     f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}">'
                     f'{escape(name[:18])}</text></g></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
