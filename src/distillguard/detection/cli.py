"""``distillguard detection ...`` commands."""

from __future__ import annotations

import argparse
import sys
import time

from distillguard.detection.topics import SHIPPED_MAP


def _build_topic_map(args: argparse.Namespace) -> int:
    from distillguard.detection.embedder import MiniLMEmbedder
    from distillguard.detection.topics import build_topic_map, save_topic_map

    if args.prompts < args.topics:
        print(f"error: --prompts ({args.prompts}) must be at least --topics ({args.topics})",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        centroids = build_topic_map(MiniLMEmbedder(), prompts=args.prompts,
                                    topics=args.topics, seed=args.seed, progress=True)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save_topic_map(centroids, args.output)
    print(f"wrote {len(centroids)} topics from {args.prompts} prompts to {args.output} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``detection build-topic-map``."""
    parser = subparsers.add_parser("detection", help="harvest detection tools")
    sub = parser.add_subparsers(dest="detection_command", required=True)
    build = sub.add_parser("build-topic-map", help="cluster real ShareGPT first prompts "
                           "into the topic map used by the coverage signal")
    build.add_argument("--prompts", type=int, default=4000, help="prompts to embed")
    build.add_argument("--topics", type=int, default=64, help="number of topics (k)")
    build.add_argument("--seed", type=int, default=0, help="k-means seed")
    build.add_argument("--output", default=str(SHIPPED_MAP), help="where to write the .npy")
    build.set_defaults(func=_build_topic_map)
