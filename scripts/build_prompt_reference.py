"""Build ``detection/prompt_reference.npz``: the reference of the prompt-distribution test.

Usage: python scripts/build_prompt_reference.py [--skip 16000] [--prompts 2000]
       [--cache embeddings.npz] [--out PATH]

Embeds the user turns (up to 1,000 characters, as detection embeds them) of ShareGPT
conversations from ``--skip`` on (in file order; the simulator's 8,000 filtered
conversations end at file index 9,354 and the priors use 8,000-14,000, so neither split
nor the priors share a conversation with the reference) with all-MiniLM-L6-v2 and
writes their random
Fourier feature mean (``detection.sketch``). ``--cache`` reuses and extends an embedding
cache written by ``CachedEmbedder.save``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from distillguard import sharegpt
from distillguard.detection.embedder import CachedEmbedder, MiniLMEmbedder
from distillguard.detection.sketch import REFERENCE_FILE, build_reference


def reference_prompts(skip: int, count: int) -> list[str]:
    """Distinct user turns of the conversations after the first ``skip``, in order."""
    out: dict[str, None] = {}
    for record in itertools.islice(sharegpt.conversations(), skip, None):
        for turn in sharegpt.human_turns(record):
            if len(turn) >= 8:
                out[turn[:1000]] = None
        if len(out) >= count:
            break
    return list(out)[:count]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", type=int, default=16000)
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=str(REFERENCE_FILE))
    args = ap.parse_args()
    embedder = CachedEmbedder(MiniLMEmbedder(), max_entries=10_000_000)
    if args.cache and Path(args.cache).exists():
        embedder.load(args.cache)
    texts = reference_prompts(args.skip, args.prompts)
    vectors = embedder.embed(texts)
    if args.cache:
        embedder.save(args.cache)
    ref = build_reference(vectors)
    ref.save(args.out)
    print(f"{len(texts)} reference prompts (ShareGPT conversations from {args.skip}); "
          f"bandwidth {ref.sigma:.3f}; |mu|^2 {ref.mu_sq:.4f}; "
          f"{embedder.misses} embedded, {embedder.hits} from the cache; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
