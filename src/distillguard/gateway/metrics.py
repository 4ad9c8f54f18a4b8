"""Prometheus counters and a latency histogram, rendered in the text exposition format.

Kept in-process and dependency-free: the gateway updates a few dicts per request and
renders them on GET /metrics.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


def label_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """``{k="v",...}`` with values escaped as the text format wants ("" for none)."""
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in pairs)
    return "{" + inner + "}"


UNMATCHED = "unmatched"


class Metrics:
    """The gateway's request, latency, token and error metrics.

    Series are labelled by route template, never by the raw path: ``routes`` (the app's
    paths, set by ``build_app``) lists the endpoints that get their own series, and any
    other path counts under ``unmatched``. Why: 20,000 keyless ``GET /v1/<random>`` made
    380k series (39.5 MB, 0.58 s per render on the event loop) when paths were labels.
    """

    def __init__(self, routes: set[str] | frozenset[str] | None = None) -> None:
        self.routes = frozenset(routes or ())
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.events_dropped = 0
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, endpoint: str, status: int, seconds: float, *,
                prompt_tokens: int = 0, completion_tokens: int = 0,
                error_type: str | None = None) -> None:
        if endpoint not in self.routes and endpoint != "other":
            endpoint = UNMATCHED
        self.requests[(endpoint, str(status))] += 1
        buckets = self._buckets.get(endpoint)
        if buckets is None:
            buckets = self._buckets[endpoint] = [0] * (len(LATENCY_BUCKETS) + 1)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum[endpoint] += seconds
        self._count[endpoint] += 1
        if prompt_tokens:
            self.tokens["prompt"] += prompt_tokens
        if completion_tokens:
            self.tokens["completion"] += completion_tokens
        if error_type:
            self.errors[error_type] += 1

    def render(self, extra: Sequence[tuple[str, str, str, float]] = ()) -> bytes:
        """Prometheus text; ``extra`` adds (name, type, help, value) series that other
        parts own (event writer, detection)."""
        out = [
            "# HELP distillguard_requests_total Requests answered, by endpoint and status.",
            "# TYPE distillguard_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f"distillguard_requests_total"
                       f"{label_text((('endpoint', endpoint), ('status', status)))} {n}")
        out += [
            "# HELP distillguard_request_duration_seconds Time from request to last byte.",
            "# TYPE distillguard_request_duration_seconds histogram",
        ]
        for endpoint, buckets in sorted(self._buckets.items()):
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS + (float("inf"),), buckets, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append("distillguard_request_duration_seconds_bucket"
                           f"{label_text((('endpoint', endpoint), ('le', le)))} {cumulative}")
            label = label_text((("endpoint", endpoint),))
            out.append(f"distillguard_request_duration_seconds_sum{label} "
                       f"{self._sum[endpoint]:.6f}")
            out.append(f"distillguard_request_duration_seconds_count{label} "
                       f"{self._count[endpoint]}")
        out += [
            "# HELP distillguard_tokens_total Tokens processed, by kind.",
            "# TYPE distillguard_tokens_total counter",
        ]
        for kind in ("prompt", "completion"):
            out.append(f"distillguard_tokens_total{label_text((('type', kind),))} "
                       f"{self.tokens[kind]}")
        out += [
            "# HELP distillguard_errors_total Error responses, by OpenAI error type.",
            "# TYPE distillguard_errors_total counter",
        ]
        for kind, n in sorted(self.errors.items()):
            out.append(f"distillguard_errors_total{label_text((('type', kind),))} {n}")
        for name, kind, text, value in extra:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        return ("\n".join(out) + "\n").encode()
