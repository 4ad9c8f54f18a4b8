"""The evidence record (JSON) and its HTML rendering with plots.

The JSON is the record of truth: what was tested, how many tokens were scored, the
p-values, the key ids and cohorts tried (never key material), the attribution, method
notes, and the exact command that reproduces it. The HTML renders the same record for a
reader, with plots of each test's statistic under keys the server never used (the
empirical null) against the statistic under our keys.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from distillguard.forensics.attribution import Attribution
from distillguard.forensics.radioactivity import TestResult

RECORD_VERSION = 1


def build_record(*, command: str, suspect: dict[str, Any], tests: list[TestResult],
                 attribution: Attribution | None, alpha: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON evidence record (see the module docstring)."""
    best = min(tests, key=lambda t: t.p_value) if tests else None
    # Several tests on one suspect: the verdict's p-value is the best one, Bonferroni-
    # corrected for how many were run, so running more tests never manufactures evidence.
    p_value = min(1.0, best.p_value * len(tests)) if best is not None else None
    return {
        "version": RECORD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "distillguard_version": _version(),
        "command": command,
        "suspect": suspect,
        "alpha": alpha,
        "verdict": ("learned from our outputs" if p_value is not None and p_value < alpha
                    else "no evidence at this alpha"),
        "p_value": p_value,
        "p_value_correction": f"Bonferroni over {len(tests)} tests" if tests else None,
        "key_ids": sorted({k.key_id for t in tests for k in t.per_key}),
        "cohorts_tried": sorted({k.cohort for t in tests for k in t.per_key}),
        "tests": [_test_dict(t) for t in tests],
        "attribution": attribution.to_dict() if attribution is not None else None,
        **(extra or {}),
    }


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("distillguard")
    except metadata.PackageNotFoundError:
        return "unknown"


def _test_dict(test: TestResult) -> dict[str, Any]:
    out = test.to_dict()
    out["empirical_p_value"] = test.empirical_p_value
    out["null_keys"] = len(test.null_z_scores)
    return out


def write_report(record: dict[str, Any], tests: list[TestResult], out_dir: Path
                 ) -> tuple[Path, Path]:
    """Write ``evidence.json`` and ``report.html`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evidence.json"
    json_path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(record, tests))
    return json_path, html_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_null(test: TestResult) -> str:
    """Base64 PNG: z-scores under unused keys (null) vs under our keys and cohorts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ours = [k.z_score for k in test.per_key if k.z_score is not None]
    null = test.null_z_scores
    lo = min([-4.0, *null, *ours])
    hi = max([4.0, *null, *ours])
    if null:
        ax.hist(null, bins=30, range=(lo, hi), density=True, alpha=0.5,
                label=f"null: {len(null)} keys never used")
    xs = np.linspace(lo, hi, 300)
    ax.plot(xs, np.exp(-xs ** 2 / 2) / math.sqrt(2 * math.pi), lw=1, color="grey",
            label="N(0, 1)")
    best = min(test.per_key, key=lambda k: k.p_value) if test.per_key else None
    for k in test.per_key:
        if k.z_score is None:
            continue
        strong = best is not None and k is best
        ax.axvline(k.z_score, color="red" if strong else "orange", lw=2 if strong else 0.6,
                   alpha=1.0 if strong else 0.5)
    ax.plot([], [], color="red", lw=2, label=f"our best key (cohort {test.cohort})")
    ax.plot([], [], color="orange", lw=0.6, label="our other cohorts")
    ax.set_xlabel("z-score of the test statistic")
    ax.set_ylabel("density")
    ax.set_title(f"{test.test}: {test.tokens_scored} tuples scored")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_cohorts(test: TestResult, alpha: float) -> str:
    """Base64 PNG: -log10 p-value of every (key id, cohort) tried."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    labels = [f"{k.key_id}/{k.cohort}" for k in test.per_key]
    heights = [-math.log10(max(k.p_value, 1e-300)) for k in test.per_key]
    ax.bar(range(len(heights)), heights, color="steelblue")
    ax.axhline(-math.log10(alpha / max(len(heights), 1)), color="red", lw=1,
               label=f"alpha {alpha:g} / {len(heights)} tests")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("-log10 p (uncorrected)")
    ax.legend(fontsize=7)
    return _png(fig)


def render_html(record: dict[str, Any], tests: list[TestResult]) -> str:
    """A self-contained HTML page (plots embedded as base64 PNG)."""
    e = html.escape
    alpha = float(record.get("alpha", 1e-3))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>distillguard evidence report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left}code,pre{background:#f4f4f4;padding:2px 4px}"
        "pre{white-space:pre-wrap}</style></head><body>",
        "<h1>Evidence report</h1>",
        f"<p><b>Verdict:</b> {e(str(record.get('verdict')))} "
        f"(smallest corrected p-value {_fmt(record.get('p_value'))}, alpha {alpha:g})</p>",
        f"<p><b>Suspect:</b> <code>{e(json.dumps(record.get('suspect')))}</code></p>",
        f"<p><b>Created:</b> {e(str(record.get('created')))}; distillguard "
        f"{e(str(record.get('distillguard_version')))}</p>",
        "<p><b>Reproduce:</b></p>",
        f"<pre>{e(str(record.get('command')))}</pre>",
        f"<p><b>Key ids tried:</b> {e(', '.join(record.get('key_ids', [])))} "
        f"(cohorts {e(str(record.get('cohorts_tried')))}); no key material is in this "
        "report.</p>",
    ]
    for test in tests:
        parts += [
            f"<h2>Test: {e(test.test)}</h2>",
            "<table>",
            *(f"<tr><th>{e(name)}</th><td>{e(str(value))}</td></tr>" for name, value in [
                ("p_value (corrected, Sidak over keys)", _fmt(test.p_value)),
                ("p_value_best_key", _fmt(test.p_value_best_key)),
                ("empirical p-value (unused keys)", _fmt(test.empirical_p_value)),
                ("key id / cohort", f"{test.key_id} / {test.cohort}"),
                ("scheme", f"{test.scheme} {json.dumps(test.params)}"),
                ("documents", test.documents),
                ("tokens_total", test.tokens_total),
                ("tokens_scored", test.tokens_scored),
                ("tokens_ignored_repeated", test.tokens_ignored_repeated),
                ("tokens_ignored_prompt", test.tokens_ignored_prompt),
                ("tokens_ignored_filter", test.tokens_ignored_filter),
                ("keys_tried", test.keys_tried),
            ]),
            "</table>",
            f"<img alt='null distribution' src='data:image/png;base64,{plot_null(test)}'>",
            f"<img alt='per cohort' src='data:image/png;base64,{plot_cohorts(test, alpha)}'>",
            "<h3>Method</h3><ul>",
            *(f"<li>{e(n)}</li>" for n in test.notes),
            "</ul>",
        ]
    attribution = record.get("attribution")
    if attribution:
        flagged = [c for c in attribution["cohorts"] if c["flagged"]]
        parts += ["<h2>Attribution</h2>", "<table><tr><th>key id</th><th>cohort</th>"
                  "<th>p_value</th><th>p_value (Holm)</th><th>accounts</th></tr>"]
        for c in flagged or []:
            accts = c.get("accounts")
            parts.append(
                f"<tr><td>{e(c['key_id'])}</td><td>{c['cohort']}</td>"
                f"<td>{_fmt(c['p_value'])}</td><td>{_fmt(c['p_value_holm'])}</td>"
                f"<td>{e(', '.join(accts)) if accts is not None else '-'}</td></tr>")
        parts.append("</table>")
        if not flagged:
            parts.append("<p>No cohort below alpha.</p>")
        parts += ["<ul>", *(f"<li>{e(n)}</li>" for n in attribution["notes"]), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
