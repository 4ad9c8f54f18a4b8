"""Build ``detection/priors.json`` from real ShareGPT traffic.

Usage: python scripts/build_priors.py [--skip N] [--records 6000] [--out PATH]

Skips the first ``--skip`` records (default: every record up to the last one the
simulator's two splits draw from, ``simulate.corpus.end_index(8000)``, so the priors
never see the evaluation's prompts; file index 9,354 with the packaged data), groups
the next ``--records`` into accounts of consecutive conversations (log-normal sizes,
median 6), sends every human turn as a request carrying the earlier turns with the real
assistant answers, and records each timing-free signal's median, 90th and 99th
percentile over the accounts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

from distillguard.detection.features import request_features
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.sharegpt import conversations
from distillguard.simulate.corpus import end_index
from distillguard.simulate.splits import CORPUS
from distillguard.telemetry.events import RequestEvent

# Signals whose value needs no timing, parameters or embeddings: ShareGPT records
# carry none of those, so a prior for the others would be made up.
PRIOR_SIGNALS = ("elicitation", "single_turn", "long_completions", "output_ratio",
                 "templating")
OUT = Path(__file__).resolve().parents[1] / "src/distillguard/detection/priors.json"


def turns(record: dict) -> list[tuple[str, str]]:
    out = []
    for t in record.get("conversations") or ():
        if isinstance(t, dict) and t.get("from") in ("human", "gpt"):
            out.append(("user" if t["from"] == "human" else "assistant",
                        str(t.get("value") or "")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", type=int, default=None,
                    help="records to skip (default: past the simulator's corpus)")
    ap.add_argument("--records", type=int, default=6000)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.skip is None:
        args.skip = end_index(max(start + n for start, n in CORPUS.values()))
    rng = random.Random(7)
    records = list(itertools.islice(conversations(), args.skip, args.skip + args.records))
    pipeline = DetectionPipeline(None, signals=list(PRIOR_SIGNALS))
    i = n_accounts = 0
    ts = 1.7e9
    seq = 0
    while i < len(records):
        size = max(1, int(round(rng.lognormvariate(1.8, 0.8))))
        account = f"acct{n_accounts}"
        n_accounts += 1
        for record in records[i:i + size]:
            history: list[dict] = []
            conv = turns(record)
            for k, (role, text) in enumerate(conv[:10]):
                if role != "user":
                    continue
                history_now = history + [{"role": "user", "content": text}]
                answer = conv[k + 1][1] if k + 1 < len(conv) else ""
                seq += 1
                ts += 60.0
                pipeline.observe(RequestEvent(
                    ts=ts, request_id=f"p{seq}", endpoint="/v1/chat/completions", status=200,
                    latency_ms=1000.0, account=account, params={},
                    prompt_tokens=sum(len(m["content"].split()) for m in history_now),
                    completion_tokens=len(answer.split()),
                    features=request_features(history_now, None, {})))
                history = history_now + [{"role": "assistant", "content": answer}]
        i += size
    values: dict[str, list[float]] = {s: [] for s in PRIOR_SIGNALS}
    for account in pipeline.accounts():
        for reading in pipeline.signals_of(account):
            if reading.value is not None:
                values[reading.signal].append(reading.value)
    out = {"source": f"ShareGPT_V3 records {args.skip}..{args.skip + len(records)} "
                     f"grouped into {n_accounts} accounts (scripts/build_priors.py)",
           "signals": {}}
    for name, vs in values.items():
        if len(vs) < 30:
            continue
        vs.sort()

        def q(p: float, vs: list[float] = vs) -> float:
            return round(vs[min(len(vs) - 1, int(p * len(vs)))], 4)

        out["signals"][name] = {"median": q(0.5), "p90": q(0.9), "p99": q(0.99),
                                "accounts": len(vs)}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
